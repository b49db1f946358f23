"""Confusion-matrix metrics for semantic segmentation: mIoU, per-class IoU, pixel accuracy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from visionkit.engine.contracts import Metric
from visionkit.registry import METRICS


@METRICS.register("miou", task="segmentation")
class SegmentationMetrics(Metric):
    """Accumulates a CxC confusion matrix (rows: target, columns: prediction) over a whole validation set.

    IoU of class c = TP / (TP + FP + FN). A class that appears neither in the targets nor in the predictions
    has no IoU (NaN as a scalar, null in the table) and is left out of the mean. Pixels equal to
    `ignore_index` are skipped. The matrix is summed over ranks by torchmetrics (`dist_reduce_fx="sum"`).
    """

    inputs = ("pred", "target")

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, class_names: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(self.num_classes)]
        n = self.num_classes
        self.add_state("matrix", torch.zeros(n, n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Add a batch of predicted and target class-index maps (`pred`, `target`, same shape), no host sync."""
        pred, target = outputs["pred"], outputs["target"]
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        n = self.num_classes
        target = target.reshape(-1).long().to(self.matrix.device)
        pred = pred.reshape(-1).long().to(self.matrix.device)
        valid = (target >= 0) & (target < n)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        codes = torch.where(valid, target * n + pred.clamp(0, n - 1), torch.full_like(target, n * n))
        self.matrix += torch.bincount(codes, minlength=n * n + 1)[: n * n].reshape(n, n)

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """mIoU, pixel/mean accuracy, `IoU/<class>` scalars and the `per_class_iou` table (null where undefined)."""
        return scores_from_matrix(self.matrix.detach().cpu().double(), self.class_names)


def scores_from_matrix(matrix: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Scores from a CxC (target x prediction) confusion matrix."""
    tp = matrix.diag()
    support = matrix.sum(1)
    predicted = matrix.sum(0)
    union = support + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    acc = torch.where(support > 0, tp / support.clamp_min(1), torch.full_like(tp, math.nan))
    total = matrix.sum()
    present = ~torch.isnan(iou)
    names = [str(name) for name in class_names]
    table = [
        {"class": name, "iou": _plain(iou[i]), "acc": _plain(acc[i]), "pixels": int(support[i])}
        for i, name in enumerate(names)
    ]
    return {
        "mIoU": float(iou[present].mean()) if present.any() else math.nan,
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_acc": float(acc[~torch.isnan(acc)].mean()) if (~torch.isnan(acc)).any() else math.nan,
        **{f"IoU/{name}": float(iou[i]) for i, name in enumerate(names)},
        "per_class_iou": table,
    }


def _plain(value: torch.Tensor) -> float | None:
    """A float, or None for NaN (JSON-safe)."""
    number = float(value)
    return None if math.isnan(number) else number
