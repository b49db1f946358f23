"""Evaluation in the core: the Metric protocol, building metrics from the config, validation-loss averaging.

Every metric is a `torchmetrics.Metric` (reset/update/compute, one cross-rank reduction path, `compute()`
cached and safe to call twice). A visionkit metric's `update` takes the dict a task's `validation_step`
returns; its `compute` returns a dict: numbers become `val/<key>` scalars, anything else (tables, lists)
goes to summary.json.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchmetrics

from visionkit.data.facts import DataFacts
from visionkit.errors import ConfigError


class Metric(torchmetrics.Metric):
    """Base class of visionkit metrics: `update(outputs)` reads a validation step's outputs by key."""

    full_state_update = False
    inputs: tuple[str, ...] = ()  # keys of the validation step's outputs this metric reads

    def update(self, outputs: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Add one batch of a validation step's outputs."""
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """Scores over everything added since the last reset, reduced over every rank."""
        raise NotImplementedError


def facts_kwargs(facts: DataFacts) -> dict[str, Any]:
    """The data facts as keyword arguments offered to builders (a builder takes the ones it names)."""
    return {
        "num_classes": facts.num_classes,
        "class_names": facts.names if facts.num_classes else facts.class_names,
        "channels": facts.channels,
        "in_chans": facts.channels,
        "image_size": facts.image_size,
        "category_ids": facts.category_ids,
        "mean": facts.mean,
        "std": facts.std,
        **facts.extra,
    }


def build_metrics(specs: Sequence[Any] | None, scopes: Sequence[str], offered: Mapping[str, Any]) -> list[Metric]:
    """Build each `metrics:` entry (a name or {name: ..., options}) from the METRICS registry."""
    from visionkit.registry import METRICS

    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(
            f"'metrics' must be a list of metric names or {{name: ..., options}} mappings, got {specs!r}."
        )
    metrics = []
    for i, spec in enumerate(specs):
        name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, Mapping) else spec
        try:
            metric = METRICS.build(spec, key=f"metrics[{i}]", task=list(scopes), **offered)
        except (TypeError, ValueError) as exc:  # a builder's own check of its options
            raise ConfigError(f"metrics[{i}] '{name}' cannot be built with these options: {exc}") from exc
        if not isinstance(metric, torchmetrics.Metric):
            raise ConfigError(
                f"metric '{name}' built a {type(metric).__name__}, not a visionkit.engine.metrics.Metric "
                "(a torchmetrics.Metric whose update takes the validation step's output dict)."
            )
        metrics.append(metric)
    return metrics


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


def batch_size_of(batch: Any, _nested: bool = False) -> int:
    """Samples in a batch: dim 0 of its first tensor, or the length of a nested list of per-sample tensors.

    `(images, labels)` and `{"image": images, ...}` count images.shape[0]; `([img, img], [target, target])`
    (detection-style lists) counts 2.
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping) and batch:
        return batch_size_of(next(iter(batch.values())), True)
    if isinstance(batch, (list, tuple)) and batch:
        if _nested and isinstance(batch[0], torch.Tensor):
            return len(batch)  # a list of per-sample tensors inside the batch
        return batch_size_of(batch[0], True)
    return 1


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

    def __init__(self, metrics: Sequence[Metric], device: torch.device | str = "cpu") -> None:
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
            from visionkit.tasks.base import to_device

            outputs = to_device(outputs, self.device)
        loss = outputs.get("loss")
        if loss is not None:
            self.loss.update(torch.as_tensor(loss), float(batch_size))
        for m in self.metrics:
            m.update(outputs)

    def compute(self) -> tuple[dict[str, float], dict[str, Any]]:
        """(val/<name> scalars, non-scalar extras) over everything added since `reset`, reduced over ranks."""
        scalars: dict[str, float] = {}
        extras: dict[str, Any] = {}
        for m in self.metrics:
            for key, value in (m.compute() or {}).items():
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
