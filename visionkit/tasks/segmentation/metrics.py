"""Confusion-matrix metrics for semantic segmentation: mIoU, per-class IoU, pixel accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from visionkit.engine.distributed import all_reduce_sum
from visionkit.registry import METRICS


@METRICS.register("miou", task="segmentation")
class SegmentationMetrics:
    """Accumulates a CxC confusion matrix (rows: target, columns: prediction) over a whole validation set.

    IoU of class c = TP / (TP + FP + FN). A class that appears neither in the targets nor in the predictions
    has no IoU (NaN in the table) and is left out of the mean. Pixels equal to `ignore_index` are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, class_names: Sequence[str] | None = None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.matrix: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.matrix = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and target class-index maps (same shape) without a host sync."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        n = self.num_classes
        target = target.reshape(-1).long()
        pred = pred.reshape(-1).long()
        valid = (target >= 0) & (target < n)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        codes = torch.where(valid, target * n + pred.clamp(0, n - 1), torch.full_like(target, n * n))
        counts = torch.bincount(codes, minlength=n * n + 1)[: n * n].reshape(n, n)
        self.matrix = counts if self.matrix is None else self.matrix + counts

    def reduced_matrix(self, device: torch.device | None = None) -> torch.Tensor:
        """The confusion matrix summed over all ranks (every rank must call this)."""
        matrix = self.matrix
        if matrix is None:
            matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=device)
        return all_reduce_sum(matrix.clone())

    def compute(self, device: torch.device | None = None) -> dict[str, object]:
        """mIoU, pixel accuracy and per-class IoU/accuracy/support from the reduced confusion matrix."""
        return scores_from_matrix(self.reduced_matrix(device).cpu().double(), self.class_names)


def scores_from_matrix(matrix: torch.Tensor, class_names: Sequence[str]) -> dict[str, object]:
    """Scores from a CxC (target x prediction) confusion matrix."""
    tp = matrix.diag()
    support = matrix.sum(1)
    predicted = matrix.sum(0)
    union = support + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    acc = torch.where(support > 0, tp / support.clamp_min(1), torch.full_like(tp, math.nan))
    total = matrix.sum()
    present = ~torch.isnan(iou)
    return {
        "mIoU": float(iou[present].mean()) if present.any() else math.nan,
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_acc": float(acc[~torch.isnan(acc)].mean()) if (~torch.isnan(acc)).any() else math.nan,
        "per_class": [
            {"class": str(name), "iou": float(iou[i]), "acc": float(acc[i]), "pixels": int(support[i])}
            for i, name in enumerate(class_names)
        ],
    }
