"""Pictures for classification runs: the confusion matrix and an annotated prediction grid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_image(confusion: torch.Tensor, names: list[str], path: Path) -> None:
    """Save a confusion matrix (rows: true class, columns: predicted) as a PNG."""
    plt = _pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(4, n * 0.5), max(3.5, n * 0.45)))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="confusion matrix")
    ax.set_xticklabels(names, rotation=90 if n > 10 else 0)
    ax.set_yticklabels(names)
    if n <= 20:
        peak = max(int(confusion.max()), 1)
        for i in range(n):
            for j in range(n):
                v = int(confusion[i, j])
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def prediction_grid(images: list[np.ndarray], tops: list[dict[str, Any]], path: Path, max_images: int = 64) -> None:
    """Save up to `max_images` images with their top-1 label and score as a grid PNG."""
    plt = _pyplot()
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
