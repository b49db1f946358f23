"""Evaluation in the core: the validation pass, validation-loss averaging, and monitor rules.

Every metric is a `visionkit.Metric` (`visionkit.engine.contracts`), a `torchmetrics.Metric` whose `update`
takes the dict a task's `validation_step` returns. The evaluator feeds those dicts to every metric and
averages `val/loss` one way for every task.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchmetrics
from torch import nn

from visionkit.data import batches, facts
from visionkit.data.batches import to_device
from visionkit.engine import contracts
from visionkit.engine.checkpoint import rng_state, set_rng_state
from visionkit.engine.contracts import StepContext, Task
from visionkit.errors import PluginError, VisionkitDeprecationWarning

LOWER_IS_BETTER = ("loss", "fd", "error", "mae", "mse", "distance")


def monitor_mode(monitor: str, task: Any) -> str:
    """The task's mode for its own monitor; for another metric, `min` for losses and distances, else `max`."""
    if monitor == task.monitor:
        return task.monitor_mode
    return "min" if any(word in monitor.lower() for word in LOWER_IS_BETTER) else "max"


def improves(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` in `mode` ("min"/"max"); NaN never improves, and anything beats NaN."""
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


class WeightedMean(torchmetrics.Metric):
    """Sum of value x weight over sum of weights, in float64, summed over ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: float) -> None:  # type: ignore[override]
        """Add one value with its weight (no host sync)."""
        self.total += value.detach().to(self.total) * weight
        self.weight += weight

    def compute(self) -> tuple[float, float]:  # type: ignore[override]
        """(weighted mean, total weight); the mean is NaN when nothing was added on any rank."""
        weight = float(self.weight)
        return (float(self.total) / weight if weight > 0 else math.nan), weight


class Evaluator:
    """Feeds validation-step outputs to the metrics and averages the validation loss one way for every task.

    A step's `loss` is its batch mean; it is weighted by the batch's sample count, so `val/loss` is the
    per-sample mean over the whole validation set (over every rank).
    """

    def __init__(self, metrics: Sequence[torchmetrics.Metric], device: torch.device | str = "cpu") -> None:
        self.metrics = list(metrics)
        self.loss = WeightedMean()
        # Metric states are float64, which MPS lacks: there they live on the CPU and outputs are moved to them.
        self.device = torch.device("cpu") if torch.device(device).type == "mps" else torch.device(device)
        self.move = self.device != torch.device(device)
        for m in (*self.metrics, self.loss):
            m.to(self.device)

    def reset(self) -> None:
        """Start a fresh validation pass."""
        self.loss.reset()
        for m in self.metrics:
            m.reset()

    def update(self, outputs: Mapping[str, Any] | None, batch_size: int) -> None:
        """Add one batch: its outputs to every metric, its loss (weighted by `batch_size`) to the mean."""
        if not outputs:
            return
        if self.move:
            outputs = to_device(outputs, self.device)
        loss = outputs.get("loss")
        if loss is not None:
            self.loss.update(torch.as_tensor(loss), float(batch_size))
        for m in self.metrics:
            try:
                m.update(outputs)
            except KeyError as exc:
                if exc.args and exc.args[0] in outputs:
                    raise  # a key missing inside the metric's own tables: its bug, with its traceback
                raise PluginError(
                    f"Metric {_named(m)} reads {exc.args[0]!r} from the validation step's outputs, which hold "
                    f"{sorted(map(str, outputs))} (the metric declares inputs {tuple(getattr(m, 'inputs', ()))}): "
                    "return that key from the task's validation_step, or choose other metrics (`metrics:`)."
                ) from None

    def compute(self) -> tuple[dict[str, float], dict[str, Any]]:
        """(val/<name> scalars, non-scalar extras) over everything added since `reset`, reduced over ranks."""
        scalars: dict[str, float] = {}
        extras: dict[str, Any] = {}
        for m in self.metrics:
            result = m.compute() or {}
            if not isinstance(result, Mapping):
                raise PluginError(
                    f"Metric {_named(m)} returned a {type(result).__name__} from compute(); a visionkit.Metric returns "
                    "a dict such as {'accuracy': value} (numbers become val/<key>, anything else goes to summary.json)."
                )
            for key, value in result.items():
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.item()
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    scalars[f"val/{key}"] = float(value)
                else:
                    extras[key] = value.tolist() if isinstance(value, torch.Tensor) else value
        with warnings.catch_warnings():  # a task without a validation loss never updates it: that is fine
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            loss, weight = self.loss.compute()  # on every rank: it is a collective under torchrun
        if weight > 0:
            scalars["val/loss"] = loss
        return scalars, extras


def _named(metric: Any) -> str:
    return f"'{type(metric).__name__}' ({type(metric).__module__})"


def run_validation(
    task: Task,
    model: nn.Module,
    loader: Any,
    evaluator: Evaluator,
    ctx: StepContext,
    max_batches: int | None = None,
    sizes: list[int] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Run the task's validation steps over a loader (or its first `max_batches`); the evaluator's (scalars, extras).

    With `max_batches` (e.g. 1, to learn which metrics a run has) the RNG streams and the metric state are
    left as they were found. `sizes` collects each batch's sample count.
    """
    saved = rng_state() if max_batches is not None else None
    was_training = model.training
    model.eval()
    evaluator.reset()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            batch = task.move_to_device(batch, ctx.device)
            with (ctx.autocast or contextlib.nullcontext)():
                outputs = task.validation_step(batch, ctx)
            count = task.batch_size(batch)
            evaluator.update(outputs, count)
            if sizes is not None:
                sizes.append(count)
            if max_batches is not None and i + 1 >= max_batches:
                break
    scalars, extras = evaluator.compute()
    model.train(was_training)
    if saved is not None:
        evaluator.reset()
        set_rng_state(saved)
    return scalars, extras


_MOVED = {
    "Metric": (contracts, "visionkit.Metric"),
    "build_metrics": (contracts, "visionkit.engine.contracts.build_metrics"),
    "facts_kwargs": (facts, "visionkit.data.facts.facts_kwargs"),
    "batch_size_of": (batches, "visionkit.data.batches.batch_size_of"),
}


def __getattr__(name: str) -> Any:
    """Names that lived here before the plugin API (`Metric`, ...): they still resolve, with a DeprecationWarning."""
    if name in _MOVED:
        module, where = _MOVED[name]
        warnings.warn(
            f"visionkit.engine.metrics.{name} moved: use {where} (the plugin API, visionkit.PLUGIN_API 2.0); "
            "the old name goes away in a later release.",
            VisionkitDeprecationWarning,
            stacklevel=2,
        )
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
