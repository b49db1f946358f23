"""Helpers shared by training and evaluation: the validation pass and the EMA update rule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionkit.engine.metrics import Evaluator
from visionkit.tasks.base import StepContext, Task


def ema_with_warmup(decay: float) -> Any:
    """EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates.

    Without the ramp the average keeps decay**n of the random initial weights (0.41 after 900
    updates at 0.999), which ruins samples and validation of short runs.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def run_validation(
    task: Task,
    model: nn.Module,
    loader: Any,
    device: torch.device,
    autocast: Any,
    ctx: StepContext,
    evaluator: Evaluator,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run the task's validation steps over a whole loader; return the evaluator's (scalars, extras)."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    with torch.no_grad():
        for batch in loader:
            batch = task.move_to_device(batch, device)
            with autocast():
                outputs = task.validation_step(batch, ctx)
            evaluator.update(outputs, task.batch_size(batch))
    scalars, extras = evaluator.compute()
    model.train(was_training)
    return scalars, extras


def metric_names(
    task: Task, model: nn.Module, loader: Any, device: torch.device, autocast: Any, evaluator: Evaluator
) -> list[str]:
    """The val/ scalars the metrics produce, from one validation batch (RNG and metric state left as found)."""
    from visionkit.engine.checkpoint import rng_state, set_rng_state

    saved, was_training = rng_state(), model.training
    model.eval()
    evaluator.reset()
    ctx = StepContext(model, model, device, autocast=autocast)
    with torch.no_grad():
        for batch in loader:
            batch = task.move_to_device(batch, device)
            with autocast():
                evaluator.update(task.validation_step(batch, ctx), task.batch_size(batch))
            break
    scalars, _ = evaluator.compute()
    evaluator.reset()
    model.train(was_training)
    set_rng_state(saved)
    return list(scalars)
