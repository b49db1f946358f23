"""Shared data helpers: augmentation pipelines, loaders and file-format readers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Folder for generated datasets: $VISIONKIT_CACHE, else ~/.cache/visionkit."""
    root = os.environ.get("VISIONKIT_CACHE") or Path.home() / ".cache" / "visionkit"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
