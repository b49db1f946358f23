"""Image grids and single-image files for generated samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionkit.tasks.generation.datasets import to_uint8

MIN_CELL = 48  # grid cells are upscaled (nearest) to at least this many pixels so tiny images stay visible


def grid_array(images: torch.Tensor, nrow: int | None = None, pad: int = 2, min_cell: int = MIN_CELL) -> np.ndarray:
    """Tile [-1, 1] images (N,C,H,W) into one uint8 HxWx3 array, `nrow` images per row."""
    arr = to_uint8(images)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_array(images, nrow)).save(path)
    return path


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "sample", start: int = 0) -> list[Path]:
    """Write each [-1, 1] image as its own PNG at native resolution; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        path = folder / f"{prefix}_{start + i:05d}.png"
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(path)
        paths.append(path)
    return paths
