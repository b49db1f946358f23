"""Shared data helpers: augmentation pipelines, loaders and file-format readers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from visionkit.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataWarning(UserWarning):
    """Data that trains, but likely not as meant (e.g. a class without images); filter it like any warning."""


def cache_dir() -> Path:
    """Folder for generated datasets: $VISIONKIT_CACHE, else ~/.cache/visionkit."""
    root = os.environ.get("VISIONKIT_CACHE") or Path.home() / ".cache" / "visionkit"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from a list of files, folders (searched recursively) and glob patterns."""
    return [path for path, _ in walk_inputs(inputs)]


def walk_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(file, relative output path) for files, folders (recursive) and glob patterns, in a stable order.

    A folder's images keep their path relative to the folder; a file keeps its name. The relative paths
    are made unique (`x.png`, `x_1.png`, ...), so outputs named after them never overwrite each other.
    """
    import glob

    pairs: list[tuple[Path, Path]] = []
    for raw in inputs:
        item = Path(raw)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            pairs += [(p, p.relative_to(item)) for p in found]
        elif item.is_file():
            pairs.append((item, Path(item.name)))
        elif glob.has_magic(str(raw)):
            matches = sorted(Path(p) for p in glob.glob(str(raw), recursive=True))
            pairs += [(p, Path(p.name)) for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise DataError(f"Input '{item}' does not exist; pass image files, folders of images or glob patterns.")
    if not pairs:
        raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in {[str(i) for i in inputs]}.")
    used: set[str] = set()
    unique = []
    for path, rel in pairs:
        stem, n = rel.with_suffix(""), 0
        candidate = stem
        while candidate.as_posix().lower() in used:
            n += 1
            candidate = stem.with_name(f"{stem.name}_{n}")
        used.add(candidate.as_posix().lower())
        unique.append((path, candidate))
    return unique
