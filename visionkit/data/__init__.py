"""Shared data helpers: augmentation pipelines, loaders and file-format readers."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataWarning(UserWarning):
    """Data that trains, but likely not as meant (e.g. a class without images); filter it like any warning."""


def cache_dir() -> Path:
    """Folder for generated datasets: $VISIONKIT_CACHE, else ~/.cache/visionkit."""
    root = os.environ.get("VISIONKIT_CACHE") or Path.home() / ".cache" / "visionkit"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
