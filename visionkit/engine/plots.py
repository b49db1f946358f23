"""Matplotlib pictures the tasks share: the headless pyplot and the confusion-matrix image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (imported on first use: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_image(
    matrix: Any, names: Sequence[str], path: Path, title: str, count_limit: int = 20, rotate_over: int = 8
) -> None:
    """A confusion matrix (rows: true, columns: predicted) as a PNG, counts written in when at most
    `count_limit` classes, column names turned upright when more than `rotate_over`."""
    plt = pyplot()
    counts, n = np.asarray(matrix), len(names)
    fig, ax = plt.subplots(figsize=(max(4, n * 0.5), max(3.5, n * 0.45)))
    ax.imshow(counts, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(names, rotation=90 if n > rotate_over else 0)
    ax.set_yticklabels(names)
    if n <= count_limit:
        peak = max(int(counts.max()), 1)
        for i in range(n):
            for j in range(n):
                v = int(counts[i, j])
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
