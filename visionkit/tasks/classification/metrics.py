"""Classification loss and metrics: cross-entropy, top-k accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import torch
from torch import nn

from visionkit.engine.distributed import all_reduce_sum
from visionkit.registry import LOSSES, METRICS

TASK = "classification"


@LOSSES.register("cross_entropy", task=TASK)
def cross_entropy(label_smoothing: float = 0.0, weight: list[float] | None = None) -> nn.Module:
    """Cross-entropy with optional label smoothing and per-class weights."""
    w = torch.tensor(weight, dtype=torch.float32) if weight is not None else None
    return nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing)


@METRICS.register("classification", task=TASK)
class ClassificationMetrics:
    """Accumulates a confusion matrix and top-k hits over a whole validation set (all ranks)."""

    def __init__(self, num_classes: int, topk: tuple[int, ...] = (1, 5)) -> None:
        self.num_classes = num_classes
        self.topk = tuple(topk)  # top-k with k above the class count counts as top-C
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated state."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.hits = torch.zeros(len(self.topk), dtype=torch.int64)
        self.count = torch.zeros((), dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of logits (N, C) and integer targets (N,)."""
        logits, target = logits.detach().float().cpu(), target.detach().cpu().long()
        pred = logits.argmax(1)
        self.confusion += torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        ranked = logits.topk(min(max(self.topk), self.num_classes), dim=1).indices
        correct = ranked == target[:, None]
        for i, k in enumerate(self.topk):
            self.hits[i] += int(correct[:, : min(k, self.num_classes)].any(1).sum())
        self.count += len(target)

    def compute(self) -> dict[str, float]:
        """Top-k accuracies over every rank's samples (reduces the state across ranks in place)."""
        for t in (self.confusion, self.hits, self.count):
            all_reduce_sum(t)
        n = max(int(self.count), 1)
        return {f"val/top{k}": float(self.hits[i]) / n for i, k in enumerate(self.topk)}

    def per_class_accuracy(self) -> list[float]:
        """Recall of each class (correct / samples of that class; NaN-free: 0 for absent classes)."""
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag().float() / totals).tolist()
