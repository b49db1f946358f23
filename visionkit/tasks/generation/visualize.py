"""Image grids and single-image files for generated samples (pictures in [-1, 1])."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from visionkit.data.images import save_image, to_uint8_image
from visionkit.tasks.generation.datasets import HALF

MIN_CELL = 48  # grid cells are upscaled (nearest) to at least this many pixels so tiny images stay visible


def to_picture(image: torch.Tensor) -> np.ndarray:
    """A [-1, 1] CxHxW tensor -> HxWxC uint8 array."""
    array = to_uint8_image(image, HALF, HALF)
    return array[:, :, None] if array.ndim == 2 else array


def grid_array(images: torch.Tensor, nrow: int | None = None, pad: int = 2, min_cell: int = MIN_CELL) -> np.ndarray:
    """Tile [-1, 1] images (N,C,H,W) into one uint8 HxWx3 array, `nrow` images per row."""
    arr = np.stack([to_picture(image) for image in images])
    n, h, w, c = arr.shape
    if c == 1:
        arr = np.repeat(arr, 3, axis=3)
    scale = max(1, math.ceil(min_cell / max(h, w)))
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y : y + h, x : x + w] = arr[i]
    return out


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a PNG grid of [-1, 1] images and return its path."""
    save_image(grid_array(images, nrow), path)
    return Path(path)


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "sample", start: int = 0) -> list[Path]:
    """Write each [-1, 1] image as its own PNG at native resolution; returns the paths."""
    paths = []
    for i, image in enumerate(images):
        path = Path(folder) / f"{prefix}_{start + i:05d}.png"
        save_image(to_picture(image), path)
        paths.append(path)
    return paths
