"""The public Python API: train, evaluate, predict and load_config."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionkit.config import get, load_config
from visionkit.data.facts import DataFacts, declared_facts
from visionkit.engine.batching import adopt_saved_batch
from visionkit.engine.checkpoint import inference_weights, load_checkpoint
from visionkit.engine.elastic import elastic_resume
from visionkit.engine.evaluation import run_validation
from visionkit.engine.metrics import Evaluator
from visionkit.engine.trainer import RunResult, Trainer
from visionkit.engine.weights import load_model_weights, skip_pretrained
from visionkit.errors import ConfigError
from visionkit.plugins import record_plugins
from visionkit.registry import TASKS
from visionkit.tasks.base import StepContext, Task

# Keys a resumed run may change: they extend or re-run the same training, not a different one.
RESUMABLE = (
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.val_every",
    "trainer.early_stop_patience",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.progress",
    "trainer.device",
    "trainer.max_bad_steps",
    "trainer.dist_timeout",
    "data.num_workers",
    "work_dir",
    "plugins",
)


def train(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    task: str | None = None,
    work_dir: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Train a model from a config file, mapping or task default; returns final/best metrics and the run dir."""
    overrides = list(overrides)
    resume, work_dir = elastic_resume(resume, config, overrides, task, work_dir)  # a torchrun restart resumes
    checkpoint = find_resume(resume, config, overrides, task, work_dir) if resume else None
    if resume is not None and str(resume) == "auto" and checkpoint is None and os.environ.get("RANK", "0") == "0":
        print("--resume auto: no checkpoints/last.pt to resume; starting a new run", flush=True)
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint)["config"]
        if task is not None and TASKS.canonical(task) != TASKS.canonical(saved["task"]):
            raise ConfigError(
                f"--task {task} does not match the checkpoint to resume, '{checkpoint}', which is a "
                f"'{saved['task']}' run. Leave out --task (a resumed run keeps its task), or start a new "
                f"{task} run without --resume."
            )
        before_no_decay = "decay_norm_and_bias" not in saved.get("optimizer", {})
        if before_no_decay:  # saved before biases and norms went undecayed: it keeps decaying them
            saved["optimizer"] = {**saved.get("optimizer", {}), "decay_norm_and_bias": True}
        cfg = load_config(config if config is not None else saved, overrides)
        if before_no_decay and not any(o.startswith("optimizer.decay_norm_and_bias=") for o in overrides):
            cfg["optimizer"]["decay_norm_and_bias"] = True
        adopt_saved_batch(saved, cfg)  # `batch_size: auto` resumes with the batch the run chose
        check_resume_changes(saved, cfg)
        if work_dir is None and not any(o.startswith("work_dir=") for o in overrides):
            cfg["work_dir"] = str(Path(checkpoint).resolve().parent.parent)
    else:
        cfg = load_config(config, overrides, task=task)
    cfg["plugins"] = record_plugins(cfg.get("plugins"), cfg)  # imported plugins it uses: its checkpoint loads them
    if work_dir is not None:
        cfg["work_dir"] = str(work_dir)
    if checkpoint is None and cfg.get("work_dir") and _holds_run(Path(cfg["work_dir"])):
        raise ConfigError(
            f"The work dir '{cfg['work_dir']}' already holds a run (checkpoints/last.pt). Continue it with "
            "--resume auto (resume='auto'), or choose another --work-dir for a new run."
        )
    try:
        return Trainer(cfg, resume=checkpoint, callbacks=callbacks).fit()
    except (RuntimeError, ValueError) as exc:  # a shape mismatch before the first update: name the layer and key
        from visionkit.engine.shape_errors import explain_training_error

        error = explain_training_error(exc)
        if error is None:
            raise
        raise error from None


def _holds_run(work_dir: Path) -> bool:
    """True when the folder holds a run's last.pt (False for a path that cannot be looked at; the trainer says why)."""
    try:
        return (work_dir / "checkpoints" / "last.pt").is_file()
    except (OSError, ValueError):
        return False


def dry_run(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    task: str | None = None,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Build a run, train and validate one batch, print model and data summaries; write nothing."""
    from visionkit.engine.dry_run import dry_run as run_dry

    return run_dry(config, list(overrides), task=task, work_dir=work_dir)


def find_resume(
    resume: str | Path, config: Any, overrides: list[str], task: str | None, work_dir: str | Path | None
) -> Path | None:
    """The checkpoint `--resume auto|PATH` points at (None for auto with nothing to resume)."""
    if str(resume) != "auto":
        path = Path(resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ConfigError(f"--resume {resume}: no checkpoint there. Give a .pt file, a run dir, or 'auto'.")
        return path
    if work_dir is None:
        work_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("work_dir=")), None)
    if work_dir is None:
        name = task or (load_config(config, overrides, task=task)["task"] if config is not None or task else None)
        runs = sorted((Path("runs") / TASKS.canonical(name)).glob("*/checkpoints/last.pt")) if name else []
        return max(runs, key=lambda p: p.stat().st_mtime) if runs else None
    path = Path(work_dir) / "checkpoints" / "last.pt"
    return path if path.is_file() else None


def check_resume_changes(saved: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """Refuse config changes that a resumed run cannot honour (everything but RESUMABLE keys)."""
    changed = [k for k in _leaf_keys(cfg) | _leaf_keys(saved) if get(cfg, k) != get(saved, k)]
    blocked = sorted(k for k in changed if not any(k == r or k.startswith(r + ".") for r in RESUMABLE))
    if blocked:
        details = "; ".join(f"{k}: {get(saved, k)!r} -> {get(cfg, k)!r}" for k in blocked[:5])
        raise ConfigError(
            f"A resumed run cannot change {', '.join(blocked)} ({details}). A resumed run may only change "
            f"{', '.join(RESUMABLE)}; start a new run (without --resume) to train with other settings."
        )


def _leaf_keys(cfg: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in cfg.items():
        if isinstance(v, Mapping) and v:
            keys |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def load_model(
    checkpoint: str | Path, overrides: Sequence[str] = (), device: str | None = None
) -> tuple[Task, nn.Module, dict[str, Any]]:
    """Rebuild the task and model of a checkpoint (EMA weights when kept), on a device, in eval mode.

    The task's `facts` are the data facts saved with the checkpoint; thread counts are left alone.
    """
    from visionkit.engine.precision import select_device

    ckpt = load_checkpoint(checkpoint)
    cfg = load_config(ckpt["config"], list(overrides))
    task = TASKS.get(cfg["task"])(cfg)
    # Checkpoints before format 2 kept the data facts in their config's data section.
    task.facts = DataFacts.from_dict(ckpt.get("facts") or declared_facts(ckpt["config"].get("data", {})).to_dict())
    dev = select_device(device or cfg["trainer"]["device"])
    with skip_pretrained():  # the checkpoint's weights replace them: no cache or network needed
        model = task.build_model(task.facts)
    load_model_weights(model, inference_weights(ckpt), checkpoint)
    model.to(dev).eval()
    task.setup(model, dev)
    return task, model, cfg


def _autocast(cfg: Mapping[str, Any], dev: torch.device) -> Any:
    from visionkit.engine.precision import autocast_factory, resolve_precision

    return autocast_factory(resolve_precision(cfg["trainer"]["precision"], dev), dev)


def evaluate(checkpoint: str | Path, overrides: Sequence[str] = (), device: str | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on its validation set (or `data.val` given in overrides), plus their tables."""
    from visionkit.data.facts import facts_of
    from visionkit.engine.loader import build_loader

    task, model, cfg = load_model(checkpoint, overrides, device)
    dev = next(model.parameters()).device
    dataset = task.build_dataset("val")
    found = facts_of(dataset)
    if found.class_names and task.facts.class_names and found.class_names != task.facts.class_names:
        raise ConfigError(
            f"data.val has classes {found.class_names[:10]} but the checkpoint was trained on "
            f"{task.facts.class_names[:10]}; evaluate on data with the same classes in the same order."
        )
    loader, _ = build_loader(
        dataset,
        batch_size=cfg["data"]["batch_size"],
        shuffle=False,
        seed=cfg["trainer"]["seed"],
        collate=task.collate,
        num_workers=cfg["data"]["num_workers"],
        train=False,
    )
    autocast = _autocast(cfg, dev)
    ctx = StepContext(model, model, dev, autocast=autocast)
    evaluator = Evaluator(task.build_metrics(task.facts), dev)
    metrics, extras = run_validation(task, model, loader, dev, autocast, ctx, evaluator)
    return {**metrics, **extras}


def predict(
    checkpoint: str | Path,
    inputs: Sequence[str | Path] = (),
    out_dir: str | Path = "predictions",
    overrides: Sequence[str] = (),
    device: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run a checkpoint on image files, folders or globs (or sample, for generation); write results to out_dir.

    An exported model (`model.onnx`, `model.torchscript` or its sidecar JSON) runs through onnxruntime or
    TorchScript on the CPU with the same preprocessing and output files.
    """
    from visionkit.deploy.runtime import is_exported, predict_exported
    from visionkit.engine.predictor import Predictor

    if is_exported(checkpoint):
        if overrides or (device not in (None, "cpu", "auto")):
            raise ConfigError("An exported model runs on the CPU as exported: drop the overrides and --device.")
        return predict_exported(checkpoint, inputs, out_dir, **options)
    task, model, cfg = load_model(checkpoint, overrides, device)
    dev = next(model.parameters()).device
    return Predictor(task, model, _autocast(cfg, dev)).run([str(i) for i in inputs], out_dir, options)
