"""`tools/profile.py`: parameters, FLOPs, peak memory, latency and throughput (eager, compiled, onnxruntime)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionkit.config import load_config
from visionkit.deploy.export import write_onnx
from visionkit.deploy.profile_table import cpu_name, format_table
from visionkit.engine.export_spec import ExportOptions, ExportSpec, image_of
from visionkit.engine.inference import load_model
from visionkit.engine.precision import select_device
from visionkit.engine.protocol import build_task
from visionkit.errors import ConfigError, require

OPSET = 17
ONNX_FEATURE = "the onnxruntime column of tools/profile.py"


@dataclass
class Target:
    """What is timed: a module, one call's example inputs and whether their batch dimension may vary."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    batched: bool = True  # False: one image per call (e.g. detection specs); batch B is B calls
    input_names: list[str] | None = None
    spec: ExportSpec | None = None  # the task's export spec (None: the model called on [B, C, S, S])


class _Tensors(nn.Module):
    """The model with its outputs flattened to a tuple of tensors (dicts and lists, in order)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model's output tensors for `inputs`."""
        return tuple(_flatten(self.model(*inputs)))


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    return []


# -- model -------------------------------------------------------------------------------------------------------
def build_untrained(
    config: Any = None, task: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Any, nn.Module, dict[str, Any], Any]:
    """Task, randomly initialised model (CPU, eval), config and training set of a config or task default.

    Datasets are built as the trainer builds them, and only to resolve the data facts.
    """
    cfg = load_config(config, list(overrides), task=task)
    built = build_task(cfg)
    data = cfg["data"]
    train = built.build_dataset("train") if data.get("train") is not None else None
    val = built.build_dataset("val") if data.get("val") is not None else None
    built.facts = built.data_facts(train, val)
    with torch.random.fork_rng(devices=[]):  # the run's seed gives the same random weights every time
        torch.manual_seed(cfg["trainer"]["seed"])
        model = built.build_model(built.facts).eval()
    built.setup(model, torch.device("cpu"))
    return built, model, cfg, train


def make_target(task: Any, model: nn.Module, image_size: int | None = None, train: Any = None) -> Target:
    """The task's export signature with a dynamic batch, or the model on a [1, C, S, S] input from the facts."""
    try:
        spec = task.export_spec(model, ExportOptions(image_size=image_size, dynamic_batch=True))
    except ConfigError:  # a signature with a fixed batch (detection: one image per call) refuses dynamic_batch
        spec = task.export_spec(model, ExportOptions(image_size=image_size, dynamic_batch=False))
    if spec is not None:
        batched = any(info.shape and isinstance(info.shape[0], str) for info in spec.inputs)
        names = [info.name for info in spec.inputs]
        return Target(spec.module, tuple(spec.example), batched, names, spec)
    facts = task.facts
    sample = image_of(train[0]) if train is not None and len(train) else None
    size = image_size or facts.image_size or (int(sample.shape[-1]) if sample is not None else None)
    if not size:
        raise ConfigError("The data facts do not give the input size of this model; pass --image-size S.")
    channels = facts.channels or (int(sample.shape[0]) if sample is not None else 3)
    return Target(_Tensors(model), (torch.randn(1, channels, size, size),), True, ["input"])


# -- measurements ------------------------------------------------------------------------------------------------
def count_params(module: nn.Module) -> dict[str, int]:
    """Total and trainable (requires_grad) parameter counts."""
    params = list(module.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def count_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Forward FLOPs of one call, as torch.utils.flop_counter.FlopCounterMode counts them (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return int(counter.get_total_flops())


def batch_of(target: Target, size: int) -> tuple[torch.Tensor, ...]:
    """One call's inputs for `size` images (a batched target), or the single-image inputs (a fixed one)."""
    if not target.batched:
        return target.example
    dynamic = [True] * len(target.example)
    if target.spec is not None:
        dynamic = [bool(i.shape) and isinstance(i.shape[0], str) for i in target.spec.inputs]
    return tuple(
        t[:1].repeat(size, *[1] * (t.dim() - 1)) if d else t for t, d in zip(target.example, dynamic, strict=True)
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_calls(call: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> list[float]:
    """Seconds of each of `iters` timed calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _row(runtime: str, batch: int, calls: int, times: list[float] | None, error: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"runtime": runtime, "batch": batch, "calls": calls}
    if times:
        row["p50_ms"] = float(np.percentile(times, 50) * 1e3)
        row["p95_ms"] = float(np.percentile(times, 95) * 1e3)
        row["images_per_s"] = float(batch / np.mean(times))
    else:
        row.update(p50_ms=None, p95_ms=None, images_per_s=None)
    row["error"] = error or None
    return row


def _reason(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def _run_torch(module: nn.Module, inputs: tuple[torch.Tensor, ...], calls: int) -> Callable[[], Any]:
    def call() -> None:
        with torch.no_grad():
            for _ in range(calls):
                module(*inputs)

    return call


def write_model_onnx(target: Target, path: Path) -> None:
    """The target as ONNX (opset 17, dynamic batch where it has one): `write_onnx` for an export signature."""
    spec = target.spec
    if spec is not None:
        write_onnx(spec, path, opset=OPSET)
        return
    with torch.no_grad():
        count = len(_flatten(target.module(*target.example)))
    inputs = [i.name for i in spec.inputs] if spec else _input_names(target)
    outputs = [o.name for o in spec.outputs] if spec else [f"output_{i}" for i in range(count)]
    axes = {name: {0: "batch"} for name in [*inputs, *outputs]} if target.batched else {}
    with warnings.catch_warnings():  # the tracer's warnings say nothing about the timings
        warnings.simplefilter("ignore")
        torch.onnx.export(
            target.module,
            target.example,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=(spec.dynamic_axes() if spec else axes) or None,
            opset_version=OPSET,
            dynamo=False,
        )


def _input_names(target: Target) -> list[str]:
    return target.input_names or [f"input_{i}" for i in range(len(target.example))]


def _onnx_session(ort: Any, target: Target, folder: Path, threads: int) -> Any:
    path = folder / "model.onnx"
    write_model_onnx(target, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures are reported in the row, not as onnxruntime's own log lines
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_onnx(session: Any, inputs: tuple[torch.Tensor, ...], calls: int) -> Callable[[], Any]:
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}

    def call() -> None:
        for _ in range(calls):
            session.run(None, feed)

    return call


def measure(
    target: Target,
    batches: Sequence[int] = (1, 8),
    device: str | torch.device = "cpu",
    iters: int = 30,
    compile: bool = True,
    onnx: bool = True,
    warmup: int | None = None,
) -> dict[str, Any]:
    """Params, FLOPs per image, peak memory and a latency row per runtime and batch size for one target."""
    device = torch.device(device)
    warmup = warmup if warmup is not None else max(2, min(10, iters // 3))
    module = target.module.eval()
    single = batch_of(target, 1)  # one image
    notes: list[str] = []
    try:
        flops: int | None = count_flops(module, single)
    except Exception as exc:  # a model the counter cannot trace still gets its timings
        flops = None
        notes.append(f"FLOPs not counted: {_reason(exc)}")
    threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    session, onnx_error = None, ""
    if onnx:
        ort = require("onnxruntime", ONNX_FEATURE)
        with tempfile.TemporaryDirectory() as folder:  # exported from the CPU fp32 module, before it moves
            try:
                session = _onnx_session(ort, target, Path(folder), threads)
            except Exception as exc:
                onnx_error = f"export failed: {_reason(exc)}"
    else:
        notes.append("onnxruntime skipped (--no-onnx)")
    if not compile:
        notes.append("torch.compile skipped (--no-compile)")
    if not target.batched:
        notes.append("one image per call (the export signature fixes batch 1): batch B is B calls")
    module.to(device)
    on_device = tuple(t.to(device) for t in target.example)
    device_target = Target(module, on_device, target.batched, target.input_names, target.spec)
    compiled = torch.compile(module) if compile else None
    peak: list[float] = []
    for batch in batches:
        inputs = batch_of(device_target, batch)
        calls = 1 if target.batched else batch
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        eager = _row("eager", batch, calls, time_calls(_run_torch(module, inputs, calls), device, iters, warmup))
        if device.type == "cuda":
            eager["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            peak.append(eager["peak_memory_mb"])
        rows.append(eager)
        if compiled is not None:
            try:
                with warnings.catch_warnings():  # libraries' deprecation notices while dynamo traces them
                    warnings.simplefilter("ignore", FutureWarning)
                    start = time.perf_counter()
                    _run_torch(compiled, inputs, 1)()
                    _sync(device)
                    first = time.perf_counter() - start
                    times = time_calls(_run_torch(compiled, inputs, calls), device, iters, warmup)
                rows.append({**_row("compile", batch, calls, times), "first_call_s": first})
            except Exception as exc:  # inductor needs a compiler and supported ops; report why instead
                rows.append(_row("compile", batch, calls, None, _reason(exc)))
        if onnx:
            if session is None:
                rows.append(_row("onnxruntime", batch, calls, None, onnx_error))
                continue
            try:
                call = _run_onnx(session, batch_of(target, batch), calls)
                rows.append(_row("onnxruntime", batch, calls, time_calls(call, torch.device("cpu"), iters, warmup)))
            except Exception as exc:
                rows.append(_row("onnxruntime", batch, calls, None, _reason(exc)))
    return {
        "params": count_params(module),
        "flops": flops,
        "peak_memory_mb": max(peak) if peak else None,
        "threads": threads,
        "iters": iters,
        "warmup": warmup,
        "images_per_call": "batch" if target.batched else 1,
        "inputs": [
            {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for name, t in zip(_input_names(target), single, strict=True)
        ],
        "rows": rows,
        "notes": notes,
    }


# -- the command -------------------------------------------------------------------------------------------------
def profile(
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    task: str | None = None,
    overrides: Sequence[str] = (),
    batches: Sequence[int] = (1, 8),
    image_size: int | None = None,
    device: str | None = None,
    iters: int = 30,
    compile: bool = True,
    onnx: bool = True,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Profile a checkpoint's model, or a config's / task default's randomly initialised one; writes profile.json."""
    if iters < 1:
        raise ConfigError(f"--iters must be at least 1, got {iters}.")
    if image_size is not None and image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 pixels, got {image_size}.")
    if checkpoint is not None and (config is not None or task is not None):
        raise ConfigError("Profile a checkpoint, or a --config / --task default's model, not both.")
    if onnx:
        require("onnxruntime", ONNX_FEATURE + " (or pass --no-onnx)")
    train = None
    if checkpoint is not None:
        built, model, cfg = load_model(checkpoint, overrides, device="cpu")
    else:
        built, model, cfg, train = build_untrained(config, task, overrides)
    dev = select_device(device or cfg["trainer"]["device"])
    target = make_target(built, model, image_size, train)
    result = measure(target, batches, dev, iters, compile, onnx)
    model_spec = cfg.get("model")
    total = count_params(model)["total"]
    if total != result["params"]["total"]:
        result["params"]["model_total"] = total  # e.g. a GAN whose exported part is the generator
    record = {
        "model": model_spec if isinstance(model_spec, str) else (model_spec or {}).get("name"),
        "task": cfg["task"],
        "source": str(checkpoint or config or f"--task {task}"),
        "signature": "export_spec" if target.spec is not None else "model(x) on [B, C, S, S] (no export spec)",
        "spec_notes": target.spec.notes if target.spec is not None else {},
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cpu": cpu_name(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,  # busy: slower
        "torch": torch.__version__,
        "onnxruntime": require("onnxruntime", ONNX_FEATURE).__version__ if onnx else None,
        **result,
    }
    folder = Path(out) if out is not None else Path.cwd()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; give a folder for profile.json.")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profile.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(format_table(record))
    print(f"wrote {path}")
    return record
