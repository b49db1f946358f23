"""The public Python API: train, dry_run, evaluate, predict, load_model and load_config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from visionkit.config import load_config as load_config_file
from visionkit.data.facts import facts_of
from visionkit.deploy.runtime import is_exported, predict_exported
from visionkit.engine import runs
from visionkit.engine.contracts import StepContext, Task
from visionkit.engine.dry_run import dry_run as run_dry
from visionkit.engine.inference import load_model as load_trained
from visionkit.engine.inference import run_autocast
from visionkit.engine.loader import build_loader
from visionkit.engine.metrics import Evaluator, run_validation
from visionkit.engine.precision import device_of
from visionkit.engine.predictor import Predictor
from visionkit.engine.protocol import build_task
from visionkit.engine.report import RunResult
from visionkit.errors import ConfigError

__all__ = ["RunResult", "dry_run", "evaluate", "load_config", "load_model", "predict", "train"]


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
    plan = runs.resolve_run(config, overrides, task=task, work_dir=work_dir, resume=resume)
    return runs.train(plan, callbacks)


def load_config(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    task: str | None = None,
) -> dict[str, Any]:
    """Load, merge and validate a config (the schema, then every component spec); a plain dict with every key."""
    cfg = load_config_file(config, overrides, task=task)
    build_task(cfg)
    return cfg


def dry_run(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    task: str | None = None,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Build a run, train and validate one batch, print model and data summaries; write nothing."""
    return run_dry(config, list(overrides), task=task, work_dir=work_dir)


def load_model(
    checkpoint: str | Path, overrides: Sequence[str] = (), device: str | None = None
) -> tuple[Task, nn.Module, dict[str, Any]]:
    """Rebuild the task and model of a checkpoint (EMA weights when kept), on a device, in eval mode.

    The task's `facts` are the data facts saved with the checkpoint; thread counts are left alone.
    """
    return load_trained(checkpoint, overrides, device)


def evaluate(checkpoint: str | Path, overrides: Sequence[str] = (), device: str | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on its validation set (or `data.val` given in overrides), plus their tables."""
    task, model, cfg = load_trained(checkpoint, overrides, device)
    dev = device_of(model)
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
    ctx = StepContext(model, model, dev, autocast=run_autocast(cfg, dev))
    metrics, extras = run_validation(task, model, loader, Evaluator(task.build_metrics(task.facts), dev), ctx)
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
    if is_exported(checkpoint):
        if overrides or (device not in (None, "cpu", "auto")):
            raise ConfigError("An exported model runs on the CPU as exported: drop the overrides and --device.")
        return predict_exported(checkpoint, inputs, out_dir, **options)
    task, model, cfg = load_trained(checkpoint, overrides, device)
    return Predictor(task, model, run_autocast(cfg, device_of(model))).run([str(i) for i in inputs], out_dir, options)
