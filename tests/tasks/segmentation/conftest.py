"""Helpers for segmentation tests: tiny image/mask folders written into tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from visionkit.registry import DATASETS, LOSSES, METRICS, MODELS


def write_folder_dataset(
    root: Path, count: int = 4, size: tuple[int, int] = (32, 40), num_classes: int = 3, seed: int = 0, mode: str = "L"
) -> list[np.ndarray]:
    """Write `count` random images and masks (class indices, `mode` L or P) under root/images, root/masks.

    Each mask is a few axis-aligned rectangles of random classes on background 0; the image is brighter
    where the class is higher, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    height, width = size
    masks = []
    for index in range(count):
        mask = np.zeros((height, width), dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
            mask[y : y + int(rng.integers(4, 12)), x : x + int(rng.integers(4, 12))] = rng.integers(1, num_classes)
        image = np.repeat((mask * (200 // max(num_classes - 1, 1)) + 20)[..., None], 3, axis=2)
        image = np.clip(image.astype(np.int16) + rng.integers(-10, 10, size=image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(
            root / "images" / f"img{index:02d}.jpg" if index % 2 else root / "images" / f"img{index:02d}.png"
        )
        mask_img = Image.fromarray(mask, mode=mode)
        if mode == "P":  # palette PNG: pixel values are palette indices = class indices
            mask_img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
        mask_img.save(root / "masks" / f"img{index:02d}.png")
        masks.append(mask)
    return masks


@pytest.fixture
def seg_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private VISIONKIT_CACHE for tests that generate data."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VISIONKIT_CACHE", str(cache))
    return cache


def build_dataset(spec: Any, **kwargs: Any) -> Any:
    """DATASETS.build for the segmentation task (names may be shared with other tasks)."""
    return DATASETS.build(spec, task="segmentation", **kwargs)


def build_model(spec: Any, **kwargs: Any) -> Any:
    """MODELS.build for the segmentation task."""
    return MODELS.build(spec, task="segmentation", **kwargs)


def build_loss(spec: Any, **kwargs: Any) -> Any:
    """LOSSES.build for the segmentation task."""
    return LOSSES.build(spec, task="segmentation", **kwargs)


def build_metric(spec: Any, **kwargs: Any) -> Any:
    """METRICS.build for the segmentation task."""
    return METRICS.build(spec, task="segmentation", **kwargs)
