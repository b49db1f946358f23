"""Example visionkit plugin: registers a `tiny_resnet` classifier and a `bars` dataset.

Installing this package is all it takes: visionkit finds it through the `visionkit.plugins`
entry point (see pyproject.toml) and imports this module before the first registry lookup.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from visionkit.registry import DATASETS, MODELS
from visionkit.tasks.classification.datasets import ArrayImages, ClassificationDataset


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


@MODELS.register("tiny_resnet", task="classification")
class TinyResNet(nn.Module):
    """A two-block residual network for small images."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(_Block(width), nn.MaxPool2d(2), _Block(width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.head(self.blocks(self.stem(x)))


@DATASETS.register("bars", task="classification")
def bars(
    split: str = "train",
    size: int = 256,
    image_size: int = 16,
    transforms: list | None = None,
    mean: list[float] = (0.5,),
    std: list[float] = (0.5,),
    seed: int = 0,
) -> ClassificationDataset:
    """Generated grey images with a horizontal, vertical or diagonal bar on noise (3 classes)."""
    rng = np.random.default_rng(seed + (0 if split == "train" else 1))
    labels = rng.integers(0, 3, size)
    images = rng.integers(0, 60, (size, image_size, image_size, 1)).astype(np.uint8)
    for i, label in enumerate(labels):
        pos = rng.integers(2, image_size - 2)
        if label == 0:
            images[i, pos - 1 : pos + 1, :, 0] = 230
        elif label == 1:
            images[i, :, pos - 1 : pos + 1, 0] = 230
        else:
            idx = np.arange(image_size)
            images[i, idx, idx, 0] = 230
    return ClassificationDataset(
        ArrayImages(images),
        labels.tolist(),
        ["horizontal", "vertical", "diagonal"],
        transforms,
        mean,
        std,
        None,
        key=f"data.{split}_transforms",
    )
