"""Classification loss and metrics: cross-entropy, top-k accuracy, per-class accuracy, confusion matrix.

The metrics wrap torchmetrics (micro-averaged `MulticlassAccuracy` with `top_k`, `MulticlassConfusionMatrix`),
so their state is reduced over every rank by torchmetrics itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchmetrics
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from visionkit.engine.contracts import Metric
from visionkit.errors import ConfigError
from visionkit.registry import LOSSES, METRICS

TASK = "classification"


@LOSSES.register("cross_entropy", task=TASK)
def cross_entropy(label_smoothing: float = 0.0, weight: list[float] | None = None) -> nn.Module:
    """Cross-entropy with optional label smoothing and per-class weights."""
    w = torch.tensor(weight, dtype=torch.float32) if weight is not None else None
    return nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing)


def _check_classes(num_classes: int, metric: str) -> int:
    """The class count as an int; torchmetrics' multiclass metrics need at least two classes."""
    if num_classes is None or int(num_classes) < 2:
        raise ConfigError(f"metric '{metric}' needs at least 2 classes, the data has {num_classes}.")
    return int(num_classes)


def _logits_and_target(outputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation step's (N, C) logits as float and its (N,) integer targets."""
    return outputs["logits"].detach().float(), outputs["target"].detach().long()


class _Wrapped(Metric):
    """A visionkit Metric around torchmetrics children: resets them with itself."""

    def reset(self) -> None:
        """Clear this metric and every wrapped torchmetrics metric."""
        super().reset()
        for child in self.modules():
            if child is not self and isinstance(child, torchmetrics.Metric):
                child.reset()


@METRICS.register("accuracy", task=TASK)
class TopKAccuracy(_Wrapped):
    """Top-k accuracy (micro-averaged) for each k in `topk`, reported as val/top<k>; k is capped at the classes."""

    inputs = ("logits", "target")

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5)) -> None:
        super().__init__()
        classes = _check_classes(num_classes, "accuracy")
        if not topk or any(int(k) < 1 for k in topk):
            raise ConfigError(f"metric 'accuracy' option topk must be a list of integers >= 1, got {topk!r}.")
        self.topk = [int(k) for k in topk]
        self.accuracies = nn.ModuleList(
            MulticlassAccuracy(classes, top_k=min(k, classes), average="micro") for k in self.topk
        )

    def update(self, outputs: Mapping[str, Any]) -> None:
        """Add one batch of logits and targets."""
        logits, target = _logits_and_target(outputs)
        for accuracy in self.accuracies:
            accuracy.update(logits, target)

    def compute(self) -> dict[str, Any]:
        """{"top<k>": accuracy} over every rank's samples."""
        return {f"top{k}": float(m.compute()) for k, m in zip(self.topk, self.accuracies)}


@METRICS.register("confusion_matrix", task=TASK)
class ConfusionMatrix(_Wrapped):
    """The confusion matrix (rows: true class, columns: predicted) as a list of lists, for summary.json."""

    inputs = ("logits", "target")

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.confusion = MulticlassConfusionMatrix(_check_classes(num_classes, "confusion_matrix"))

    def update(self, outputs: Mapping[str, Any]) -> None:
        """Add one batch of logits and targets."""
        self.confusion.update(*_logits_and_target(outputs))

    def compute(self) -> dict[str, Any]:
        """{"confusion_matrix": [[count, ...], ...]} over every rank's samples."""
        return {"confusion_matrix": self.confusion.compute().long().tolist()}


@METRICS.register("per_class_accuracy", task=TASK)
class PerClassAccuracy(_Wrapped):
    """Accuracy (recall) of each class by name; None for a class without validation samples."""

    inputs = ("logits", "target")

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        classes = _check_classes(num_classes, "per_class_accuracy")
        self.names = list(class_names) if class_names else [f"class_{i}" for i in range(classes)]
        if len(self.names) != classes:
            raise ConfigError(f"metric 'per_class_accuracy' got {len(self.names)} class names for {classes} classes.")
        self.confusion = MulticlassConfusionMatrix(classes)

    def update(self, outputs: Mapping[str, Any]) -> None:
        """Add one batch of logits and targets."""
        self.confusion.update(*_logits_and_target(outputs))

    def compute(self) -> dict[str, Any]:
        """{"per_class_accuracy": {name: accuracy or None}} over every rank's samples."""
        confusion = self.confusion.compute().double()
        support, hits = confusion.sum(1), confusion.diag()
        values = [float(h / s) if s > 0 else None for h, s in zip(hits.tolist(), support.tolist())]
        predicted = confusion.sum(0).tolist()
        precision = [float(h / p) if p > 0 else None for h, p in zip(hits.tolist(), predicted)]
        rows = [[n, int(s), a, p, a] for n, s, a, p in zip(self.names, support.tolist(), values, precision)]
        table = {"columns": ["class", "samples", "accuracy", "precision", "recall"], "rows": rows}
        return {"per_class_accuracy": dict(zip(self.names, values)), "per_class_table": table}
