"""Segmentation losses on BxCxHxW logits and BxHxW class-index targets, all honouring `ignore_index`.

None of them synchronises with the host: an all-ignored batch gives a loss of 0 (with a gradient path)
instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.errors import ConfigError
from visionkit.registry import LOSSES


def _weights(class_weights: list[float] | None, num_classes: int, what: str) -> torch.Tensor | None:
    if class_weights is None:
        return None
    if len(class_weights) != num_classes or any(float(w) < 0 for w in class_weights):
        raise ConfigError(
            f"{what}.class_weights has {len(class_weights)} entries {list(class_weights)} but data.num_classes is "
            f"{num_classes}; give one non-negative weight per class."
        )
    return torch.tensor([float(w) for w in class_weights], dtype=torch.float32)


def _valid(target: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of pixels that count, target with ignored pixels replaced by class 0)."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


@LOSSES.register("cross_entropy", task="segmentation", aliases=["ce"])
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy; the mean is weighted by class weights like `torch.nn.CrossEntropyLoss`."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        self.register_buffer("weight", _weights(class_weights, num_classes, "loss"), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the non-ignored pixels."""
        valid, safe = _valid(target, self.ignore_index)
        per_pixel = F.cross_entropy(
            logits.float(), safe, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing
        )
        pixel_weight = valid.float() if self.weight is None else self.weight[safe] * valid
        return (per_pixel * valid).sum() / pixel_weight.sum().clamp_min(1e-8)


@LOSSES.register("dice", task="segmentation")
class DiceLoss(nn.Module):
    """Soft Dice loss, 1 - mean over classes of (2|P∩T| + smooth) / (|P| + |T| + smooth), over the batch."""

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, smooth: float = 1.0, include_background: bool = True
    ) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.smooth, self.include_background = smooth, include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice loss of softmax probabilities against one-hot targets (ignored pixels excluded)."""
        valid, safe = _valid(target, self.ignore_index)
        probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)
        onehot = F.one_hot(safe, self.num_classes).permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        if not self.include_background:
            dice = dice[1:]
        return 1 - dice.mean()


@LOSSES.register("ce_dice", task="segmentation", aliases=["ce+dice"])
class CrossEntropyDiceLoss(nn.Module):
    """Weighted sum `ce_weight * cross-entropy + dice_weight * Dice`."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_weights: list[float] | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.ce = CrossEntropyLoss(num_classes, ignore_index, class_weights)
        self.dice = DiceLoss(num_classes, ignore_index, smooth)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum of both losses."""
        return self.ce_weight * self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


@LOSSES.register("focal", task="segmentation")
class FocalLoss(nn.Module):
    """Multi-class focal loss -alpha_t (1 - p_t)^gamma log p_t, averaged over non-ignored pixels."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        gamma: float = 2.0,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, gamma
        self.register_buffer("alpha", _weights(class_weights, num_classes, "loss"), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean focal loss; with gamma=0 and no class weights it equals cross-entropy."""
        valid, safe = _valid(target, self.ignore_index)
        log_pt = logits.float().log_softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -((1 - log_pt.exp()).clamp_min(0) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * self.alpha[safe]
        return (loss * valid).sum() / valid.sum().clamp_min(1)
