"""Pictures for classification runs: the confusion matrix and an annotated prediction grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionkit.engine.plots import confusion_image, pyplot


def confusion_matrix_image(confusion: torch.Tensor, names: list[str], path: Path) -> None:
    """Save a confusion matrix (rows: true class, columns: predicted) as a PNG."""
    confusion_image(confusion.numpy(), names, path, "confusion matrix", count_limit=20, rotate_over=10)


def prediction_grid(images: list[np.ndarray], tops: list[dict[str, Any]], path: Path, max_images: int = 64) -> None:
    """Save up to `max_images` images with their top-1 label and score as a grid PNG."""
    plt = pyplot()
    n = min(len(images), max_images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, top in zip(axes.flat, images[:n], tops[:n]):
        ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
        ax.set_title(f"{top['name']} {top['score']:.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
