"""Prediction helpers for generation: class labels for conditional models, inpainting masks and grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionkit.data.images import read_image
from visionkit.errors import ConfigError
from visionkit.tasks.generation.datasets import load_image, to_model_range
from visionkit.tasks.generation.visualize import save_grid

MASK_SHAPES = ("center", "left", "right", "top", "bottom")


def class_labels(model: nn.Module, value: Any, n: int, start: int = 0) -> torch.Tensor | None:
    """Labels of samples start..start+n: one int for all, a list cycled, or None to cycle over all classes."""
    if not getattr(model, "conditional", False):
        if value is not None:
            raise ConfigError("option labels was given but this model is unconditional.")
        return None
    k = model.num_classes
    values = list(range(k)) if value is None else (value if isinstance(value, list) else [value])
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < k for v in values):
        raise ConfigError(f"option labels must be class indices in [0, {k - 1}] (one or a list), got {value!r}.")
    return torch.tensor([values[i % len(values)] for i in range(start, start + n)])


def make_mask(shape: str, size: int) -> np.ndarray:
    """A float HxW mask with 1 where to fill: the centre square (half the side) or one half of the image."""
    mask = np.zeros((size, size), np.float32)
    half, quarter = size // 2, size // 4
    if shape == "center":
        mask[quarter : quarter + half, quarter : quarter + half] = 1
    elif shape == "left":
        mask[:, :half] = 1
    elif shape == "right":
        mask[:, half:] = 1
    elif shape == "top":
        mask[:half] = 1
    elif shape == "bottom":
        mask[half:] = 1
    else:
        raise ConfigError(f"option mask is {shape!r}; give a mask image path or one of {', '.join(MASK_SHAPES)}.")
    return mask


def read_mask(path: Path, size: int) -> np.ndarray:
    """A mask image (white = fill) resized like the images, as a float HxW array of 0/1."""
    return (load_image(path, 1, size)[:, :, 0] >= 128).astype(np.float32)


def mask_option(spec: Any, size: int) -> np.ndarray:
    """The `mask` option: a mask image path, or one of the shapes in MASK_SHAPES."""
    path = Path(str(spec))
    return read_mask(path, size) if path.is_file() else make_mask(str(spec), size)


def inpaint_grid(records: Sequence[dict[str, Any]], out_dir: Path, size: int, channels: int | None) -> Path:
    """inpaint_grid.png from what prediction wrote: rows of inputs, masked inputs and results, 8 per row."""
    rows = [[to_model_range(load_image(Path(r["input"]), channels, size)) for r in records]]
    for kind in ("masked", "inpaint"):
        rows.append([to_model_range(read_image(out_dir / r[kind], channels)) for r in records])
    per_row = min(len(records), 8)
    blank = [torch.ones_like(rows[0][0])] * (-len(records) % per_row)  # white cells complete the last row
    padded = [torch.stack(row + blank) for row in rows]
    tiles = [t[s : s + per_row] for s in range(0, len(padded[0]), per_row) for t in padded]
    return save_grid(torch.cat(tiles), out_dir / "inpaint_grid.png", per_row)
