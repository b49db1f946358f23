"""Shared data helpers: augmentation pipelines, loaders and file-format readers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from visionkit.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def cache_dir() -> Path:
    """Folder for generated datasets: $VISIONKIT_CACHE, else ~/.cache/visionkit."""
    root = os.environ.get("VISIONKIT_CACHE") or Path.home() / ".cache" / "visionkit"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from a list of files and folders (folders searched recursively, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"Input '{item}' does not exist; pass image files or folders of images.")
    if not files:
        raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in {[str(i) for i in inputs]}.")
    return files
