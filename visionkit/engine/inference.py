"""A trained model for inference: the task and model of a checkpoint, rebuilt from what the checkpoint holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionkit.config import load_config
from visionkit.data.facts import DataFacts, declared_facts
from visionkit.engine.checkpoint import inference_weights, load_checkpoint
from visionkit.engine.contracts import Task
from visionkit.engine.precision import autocast_factory, resolve_precision, select_device
from visionkit.engine.protocol import build_task
from visionkit.engine.weights import load_model_weights, skip_pretrained


def load_model(
    checkpoint: str | Path, overrides: Sequence[str] = (), device: str | None = None
) -> tuple[Task, nn.Module, dict[str, Any]]:
    """Rebuild the task and model of a checkpoint (EMA weights when kept), on a device, in eval mode.

    The task's `facts` are the data facts saved with the checkpoint; thread counts are left alone.
    """
    ckpt = load_checkpoint(checkpoint)
    # The checkpoint's plugins are information: loading it never imports or calls them.
    cfg = load_config(ckpt["config"], list(overrides), source=f"Checkpoint '{checkpoint}'", plugin_info=_recorded(ckpt))
    task = build_task(cfg)
    # Checkpoints before format 2 kept the data facts in their config's data section.
    task.facts = DataFacts.from_dict(ckpt.get("facts") or declared_facts(ckpt["config"].get("data", {})).to_dict())
    dev = select_device(device or cfg["trainer"]["device"])
    with skip_pretrained():  # the checkpoint's weights replace them: no cache or network needed
        model = task.build_model(task.facts)
    load_model_weights(model, inference_weights(ckpt), checkpoint)
    model.to(dev).eval()
    task.setup(model, dev)
    return task, model, cfg


def _recorded(ckpt: Mapping[str, Any]) -> list[Any]:
    """What a checkpoint recorded of its plugins (spec, module, distribution); older checkpoints record nothing."""
    recorded = ckpt.get("plugins")
    return list(recorded) if isinstance(recorded, list) else []


def run_autocast(cfg: Mapping[str, Any], device: torch.device) -> Any:
    """The autocast factory of a run's `trainer.precision` on `device`."""
    return autocast_factory(resolve_precision(cfg["trainer"]["precision"], device), device)
