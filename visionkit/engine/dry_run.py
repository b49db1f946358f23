"""Dry run: build a run's data, model, loss and optimizers, run one training and one validation batch, write nothing.

`tools/train.py ... --dry-run` prints a model summary (layers to a readable depth with their output shapes and
parameter counts), a data summary (sizes, classes, one batch's shapes and value ranges, steps per epoch), the
loss and gradient norm of one batch, and the optimizers and schedules. A shape or channel mismatch in a forward
pass becomes a ConfigError naming the layer, both sizes and the config key to change
(`visionkit.engine.shape_errors`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionkit.config import load_config
from visionkit.engine.contracts import StepContext
from visionkit.engine.metrics import run_validation
from visionkit.engine.shape_errors import translated_shape_errors
from visionkit.engine.sizing import duration, sizing_warnings
from visionkit.engine.trainer import Trainer

MAX_ROWS = 40  # model summary rows; deeper levels are shown only while they fit
MAX_DEPTH = 3
SHOWN_CLASSES = 10


def dry_run(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    task: str | None = None,
    *,
    work_dir: str | Path | None = None,
    out: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Build everything for a run, push one training and one validation batch through, print summaries, write nothing.

    Returns the summaries as a dict (model, data, train, validation, optimizers, seconds); `out=None` prints nothing.
    A shape/channel mismatch raises ConfigError naming the layer, what it expected and got, and the key to change.
    """
    start = time.perf_counter()
    cfg = load_config(config, list(overrides), task=task)
    if work_dir is not None:
        cfg["work_dir"] = str(work_dir)
    trainer = Trainer(cfg, write=False)  # no run folder, no config.yaml
    with translated_shape_errors(trainer), trainer:
        built = time.perf_counter()
        recorder = OutputRecorder(trainer.module)
        with recorder:
            batch, train = _training_batch(trainer)
        validation = _validation_batch(trainer)
    report = {
        "task": cfg["task"],
        "model": model_summary(trainer.module, recorder),
        "data": data_summary(trainer, batch),
        "train": train,
        "validation": validation,
        "optimizers": optimizer_summary(trainer),
        "sizing": {
            "warnings": sizing_warnings(cfg, trainer.planned_updates(), trainer.train_set),
            "updates": trainer.planned_updates(),
            "estimate_s": round(train["step_seconds"] * trainer.planned_updates(), 1),
        },
        "seconds": {"build": round(built - start, 2), "total": round(time.perf_counter() - start, 2)},
        "run_dir": str(trainer.run_dir),
    }
    if out is not None:
        for line in format_report(report):
            out(line)
    return report


class OutputRecorder:
    """Forward hooks on every submodule up to MAX_DEPTH: the first output's shape and the number of calls."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.outputs: dict[str, str] = {}
        self.calls: dict[str, int] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> OutputRecorder:
        for name, module in self.model.named_modules():
            if name.count(".") < MAX_DEPTH:
                self.handles.append(module.register_forward_hook(self._hook(name or "(model)")))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name not in self.outputs:
                self.outputs[name] = shape_of(output)

        return record


def shape_of(x: Any, limit: int = 48) -> str:
    """A short description of a module output's shape: [32, 10], 5 x [16, 64, 12, 12], {'0': [..], ...}."""
    if isinstance(x, torch.Tensor):
        text = str(list(x.shape)) if x.dim() else "scalar"
    elif isinstance(x, Mapping):
        text = "{" + ", ".join(f"{k}: {shape_of(v, limit)}" for k, v in list(x.items())[:3]) + "}"
        if len(x) > 3:
            text = text[:-1] + f", +{len(x) - 3}}}"
    elif isinstance(x, (list, tuple)):
        shapes = [shape_of(v, limit) for v in x]
        if shapes and len(set(shapes)) == 1:
            text = f"{len(shapes)} x {shapes[0]}"
        else:
            text = "(" + ", ".join(shapes[:3]) + (", ..." if len(shapes) > 3 else "") + ")"
    elif hasattr(x, "tensors") and isinstance(x.tensors, torch.Tensor):  # torchvision ImageList
        text = f"ImageList {list(x.tensors.shape)}"
    elif x is None:
        text = "None"
    else:
        text = type(x).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def model_summary(model: nn.Module, recorder: OutputRecorder) -> dict[str, Any]:
    """Rows (name, type, output shape, calls, params, trainable) to the deepest level that fits MAX_ROWS."""
    named = [(n, m) for n, m in model.named_modules() if n]
    depth = MAX_DEPTH
    while depth > 1 and sum(1 for n, _ in named if n.count(".") < depth) > MAX_ROWS:
        depth -= 1
    rows = []
    for name, module in named:
        if name.count(".") >= depth:
            continue
        total, trainable = _count(module)
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "output": recorder.outputs.get(name, "-"),
                "calls": recorder.calls.get(name, 0),
                "params": total,
                "trainable": trainable,
            }
        )
    hidden = max(0, len(rows) - MAX_ROWS)
    total, trainable = _count(model)
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {
        "name": type(model).__name__,
        "depth": depth,
        "rows": rows[:MAX_ROWS],
        "rows_hidden": hidden,
        "output": recorder.outputs.get("(model)", "-"),
        "total_params": total,
        "trainable_params": trainable,
        "size_mb": round(size_mb, 2),
    }


def tensor_stats(x: torch.Tensor) -> dict[str, Any]:
    """dtype, min, max and (for floats) mean of a tensor's values."""
    x = x.detach()
    stats: dict[str, Any] = {"dtype": str(x.dtype).removeprefix("torch.")}
    if x.numel():
        if x.dtype == torch.bool:
            x = x.int()
        stats["min"], stats["max"] = float(x.min()), float(x.max())
        if x.is_floating_point():
            stats["mean"] = float(x.float().mean())
    return stats


def describe_batch(x: Any, name: str = "batch") -> list[dict[str, Any]]:
    """One entry per tensor (or list of tensors, or key of a list of dicts): shape, dtype and value range."""
    if isinstance(x, torch.Tensor):
        return [{"name": name, "shape": list(x.shape), **tensor_stats(x)}]
    if isinstance(x, Mapping):
        return [e for k, v in x.items() for e in describe_batch(v, f"{name}.{k}")]
    same_kind = isinstance(x, list) and x and all(isinstance(v, torch.Tensor) for v in x)
    if same_kind and len({(v.dim(), v.dtype) for v in x}) == 1:  # e.g. detection's list of images
        shapes = {tuple(v.shape) for v in x}
        flat = torch.cat([v.detach().reshape(-1).to(x[0].dtype) for v in x])
        shape = (
            [len(x), *next(iter(shapes))] if len(shapes) == 1 else f"{len(x)} tensors of shapes {sorted(shapes)[:3]}"
        )
        return [{"name": name, "shape": shape, "items": len(x), **tensor_stats(flat)}]
    if isinstance(x, list) and x and all(isinstance(v, Mapping) for v in x):  # e.g. detection's targets
        entries = []
        for key in x[0]:
            values = [v.get(key) for v in x]
            if not all(isinstance(v, torch.Tensor) for v in values):
                continue
            counts = [int(v.shape[0]) if v.dim() else 1 for v in values]
            flat = torch.cat([v.detach().reshape(-1) for v in values]) if sum(counts) else values[0].reshape(-1)
            entries.append(
                {
                    "name": f"{name}[*].{key}",
                    "shape": f"{len(values)} items, e.g. {shape_of(values[0])}",
                    "per_item": {"min": min(counts), "max": max(counts), "total": sum(counts)},
                    **tensor_stats(flat),
                }
            )
        return entries
    if isinstance(x, (list, tuple)):
        return [e for i, v in enumerate(x) for e in describe_batch(v, f"{name}[{i}]")]
    return [{"name": name, "shape": type(x).__name__}]


def data_summary(trainer: Any, batch: Any) -> dict[str, Any]:
    """Split sizes, classes, the batch size, steps per epoch and one training batch's tensors."""
    facts = trainer.facts
    names = facts.names
    return {
        "train_size": len(trainer.train_set),
        "val_size": len(trainer.val_set) if trainer.val_set is not None else None,
        "num_classes": facts.num_classes,
        "class_names": names[:SHOWN_CLASSES],
        "channels": facts.channels,
        "image_size": facts.image_size,
        "mean": facts.mean,
        "std": facts.std,
        "batch_size": trainer.task.batch_size(batch),
        "configured_batch_size": trainer.cfg["data"]["batch_size"],
        "batches_per_epoch": len(trainer.sampler),
        "updates_per_epoch": trainer.updates_per_epoch,
        "total_updates": trainer.horizon,
        "batch": describe_batch(batch),
    }


def _training_batch(trainer: Trainer) -> tuple[Any, dict[str, Any]]:
    """One training batch through every optimizer group: forward, loss, backward, one update (never saved).

    The update is the trainer's own (`trainer.updater`, as one whole update and with the loss checked), with the
    gradient norm of each group read just before its optimizer steps.
    """
    trainer.sampler.set_epoch(0, 0)
    trainer.module.train()
    t0 = time.perf_counter()
    raw = next(iter(trainer.train_loader))
    loaded = time.perf_counter()
    batch = trainer.task.move_to_device(raw, trainer.device)
    ctx = StepContext(trainer.model, trainer.module, trainer.device, autocast=trainer.autocast)
    norms: dict[str, float] = {}

    def read_norms(name: str) -> None:
        params = trainer.groups[name].params
        scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else 1.0
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        norms[name] = float(torch.stack(grads).norm()) / scale if grads else 0.0
        norms[f"{name}/params_without_grad"] = sum(1 for p in params if p.requires_grad and p.grad is None)

    # Step 0: every group is due; one batch is a whole update here. Every group steps even when a loss is not
    # finite ("log": no NaN reaches the weights), so the report shows every group's losses and gradient norms.
    updater = trainer.updater.replace(
        accumulate=1,
        finite_check="log",
        max_bad_steps=None,
        before_step=read_norms,
        warn=lambda message: None,
        keep_outputs=True,
    )
    updater.train_batch(batch, ctx, ends_update=True)
    losses = {
        name: {k: float(v.detach().float()) for k, v in (out or {}).items() if torch.is_tensor(v) and v.numel() == 1}
        for name, out in updater.last_outputs.items()
    }
    return raw, {
        "losses": losses,
        "grad_norm": norms,
        "finite": all(math.isfinite(v) for d in losses.values() for v in d.values()),
        "load_seconds": round(loaded - t0, 3),
        "step_seconds": round(time.perf_counter() - loaded, 3),
    }


def _validation_batch(trainer: Trainer) -> dict[str, Any] | None:
    """One validation batch through `task.validation_step` and the evaluator (EMA weights when kept)."""
    if trainer.val_loader is None:
        return None
    t0 = time.perf_counter()
    model = trainer.ema.model.module if trainer.ema is not None else trainer.module
    ctx = StepContext(model, model, trainer.device, autocast=trainer.autocast)
    sizes: list[int] = []
    scalars, _ = run_validation(trainer.task, model, trainer.val_loader, trainer.evaluator, ctx, 1, sizes)
    return {
        "batch_size": sizes[0] if sizes else 0,
        "metrics": scalars,
        "monitor": trainer.monitor,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def optimizer_summary(trainer: Any) -> dict[str, Any]:
    """Per optimizer: its class, parameter groups (tensors, lr, weight decay) and the schedule."""
    result = {}
    for name, opt in trainer.optimizers.items():
        groups = [
            {
                "tensors": len(g["params"]),
                "params": sum(p.numel() for p in g["params"]),
                "lr": g.get("initial_lr", g["lr"]),
                "weight_decay": g.get("weight_decay"),
            }
            for g in opt.param_groups
        ]
        sched = trainer.schedulers[name]
        result[name] = {
            "optimizer": type(opt).__name__,
            "groups": groups,
            "scheduler": type(sched).__name__,
            "scheduler_config": dict(trainer.cfg.get("scheduler") or {}),
            "horizon": trainer.horizon,
        }
    return result


def _num(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_report(report: dict[str, Any]) -> list[str]:
    """The printed dry-run report: model table, data, one batch, losses, optimizers, 'dry run ok'."""
    m, d = report["model"], report["data"]
    lines = [f"== model: {m['name']} (layers to depth {m['depth']}; output shapes from one training batch)"]
    width = max([len(r["name"]) + 2 * r["name"].count(".") for r in m["rows"]] + [5])
    lines.append(f"  {'layer':<{width}}  {'type':<24} {'output':<40} {'params':>12}")
    for r in m["rows"]:
        label = "  " * r["name"].count(".") + r["name"]
        calls = f" x{r['calls']}" if r["calls"] > 1 else ""
        frozen = f" ({r['trainable']:,} trainable)" if r["trainable"] != r["params"] else ""
        out = r["output"] + calls
        lines.append(f"  {label:<{width}}  {r['type'][:24]:<24} {out:<40} {r['params']:>12,}{frozen}")
    if m["rows_hidden"]:
        lines.append(f"  ... {m['rows_hidden']} more layers")
    lines.append(f"  model output: {m['output']}")
    lines.append(
        f"  parameters: {m['total_params']:,} total, {m['trainable_params']:,} trainable "
        f"({m['total_params'] - m['trainable_params']:,} frozen), {m['size_mb']} MB"
    )
    names = ", ".join(d["class_names"]) + (", ..." if (d["num_classes"] or 0) > len(d["class_names"]) else "")
    lines += [
        "== data",
        f"  train: {d['train_size']} samples  val: {d['val_size'] if d['val_size'] is not None else 'none'}",
        f"  classes: {d['num_classes']} ({names})" if d["num_classes"] else "  classes: none",
        f"  channels: {d['channels']}  image_size: {d['image_size']}  mean: {d['mean']}  std: {d['std']}",
        f"  batch size: {d['batch_size']} (data.batch_size: {d['configured_batch_size']}), "
        f"{d['batches_per_epoch']} batches and {d['updates_per_epoch']} updates per epoch, "
        f"{d['total_updates']} updates in all",
        "  one training batch:",
    ]
    for e in d["batch"]:
        shape = e["shape"] if isinstance(e["shape"], str) else str(e["shape"])
        values = ""
        if "min" in e:
            values = f" values {_num(e['min'])}..{_num(e['max'])}" + (f" mean {e['mean']:.4g}" if "mean" in e else "")
        per = e.get("per_item")
        count = f" per item {per['min']}-{per['max']} (total {per['total']})" if per else ""
        lines.append(f"    {e['name']}: {shape} {e.get('dtype', '')}{count}{values}")
    t = report["train"]
    lines.append(f"== one training batch (loaded in {t['load_seconds']}s, step in {t['step_seconds']}s)")
    for name, losses in t["losses"].items():
        values = "  ".join(f"{k} {v:.4g}" for k, v in losses.items()) or "step skipped (training_step returned None)"
        norm = t["grad_norm"].get(name)
        grads = f"  grad norm {norm:.4g}" if norm is not None else ""
        missing = t["grad_norm"].get(f"{name}/params_without_grad")
        unused = f" ({missing} trainable tensors got no gradient)" if missing else ""
        lines.append(f"  [{name}] {values}{grads}{unused}")
    if not t["finite"]:
        lines.append("  warning: the loss is not finite; try a lower optimizer.lr or trainer.precision=fp32")
    v = report["validation"]
    if v is None:
        lines.append("== validation: no data.val")
    else:
        metrics = "  ".join(f"{k} {val:.4g}" for k, val in v["metrics"].items()) or "no scalars from one batch"
        lines.append(f"== one validation batch ({v['batch_size']} samples, {v['seconds']}s): {metrics}")
        lines.append(f"  monitor: {v['monitor']}")
    lines.append("== optimizers")
    for name, o in report["optimizers"].items():
        lines.append(
            f"  [{name}] {o['optimizer']}, {o['scheduler']} over {o['horizon']} updates {o['scheduler_config']}"
        )
        for i, g in enumerate(o["groups"]):
            lines.append(
                f"    group {i}: {g['tensors']} tensors, {g['params']:,} params, lr {g['lr']:.4g}, "
                f"weight_decay {g['weight_decay']}"
            )
    z = report["sizing"]
    lines.append("== sizing")
    lines += [f"  warning: {w}" for w in z["warnings"]]
    lines.append(
        f"  estimate: one step of {t['step_seconds']}s x {z['updates']} updates = about {duration(z['estimate_s'])} "
        "(a first step is often slower than the rest; validation not included)"
    )
    s = report["seconds"]
    lines.append(
        f"dry run ok: nothing written ({s['total']}s, {s['build']}s to build); the run would go to {report['run_dir']}"
    )
    return lines
