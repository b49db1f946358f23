"""Shared data helpers: augmentation pipelines, loaders and file-format readers."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from visionkit.errors import DataError, VisionkitWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")  # predict reads these through PyAV (the video extra)


class DataWarning(VisionkitWarning):
    """Data that trains, but likely not as meant (e.g. a class without images); filter it like any warning."""


def cache_dir() -> Path:
    """Folder for generated datasets: $VISIONKIT_CACHE, else ~/.cache/visionkit."""
    root = os.environ.get("VISIONKIT_CACHE") or Path.home() / ".cache" / "visionkit"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def path_in_root(root: Path, name: str, where: str, allow_outside: bool = False, key: str = "") -> Path:
    """`root / name` for a file an annotation names; a DataError when it leaves `root` (`../x.png`, an absolute
    path), unless the dataset allows it (`allow_outside_root: true`): an annotation file must not read elsewhere."""
    path = root / name
    if allow_outside:
        return path
    base = os.path.realpath(root)
    if os.path.isabs(name) or os.path.commonpath([base, os.path.realpath(path)]) != base:
        option = f" Set {key}.allow_outside_root=true if the images really live elsewhere." if key else ""
        raise DataError(
            f"{where} names the image '{name}', which lies outside the image folder '{root}': annotation files may "
            f"only name images under it (relative paths, no '..').{option}"
        )
    return path


def skip_hidden(paths: list[Path], root: Path, where: str) -> list[Path]:
    """`paths` without hidden files and folders (a name under `root` starting with '.', such as macOS's `._x.png`
    or `.DS_Store/`), with one DataWarning saying how many were skipped."""
    kept = [p for p in paths if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if len(kept) < len(paths):
        example = next(p for p in paths if p not in kept)
        warnings.warn(
            f"{where}: skipped {len(paths) - len(kept)} hidden file(s) or folder(s) under '{root}' (names starting "
            f"with '.', e.g. '{example}'); rename them without the dot to use them.",
            DataWarning,
            stacklevel=3,
        )
    return kept


PATH_KEYS = ("root", "ann_file", "image_dir", "data_yaml", "file", "mask_dir", "image_root", "images", "masks")


def absolute_data_paths(cfg: dict) -> dict:
    """Make the relative paths of `data.train` / `data.val` / `data.test` that exist from the working folder
    absolute (in place), so a run's config.yaml, its checkpoints and a sweep's best_config.yaml work from any
    folder; returns cfg. Values that are not existing paths are left as they are."""
    data = cfg.get("data") or {}
    for split in ("train", "val", "test"):
        spec = data.get(split)
        if not isinstance(spec, dict):
            continue
        for key in PATH_KEYS:
            value = spec.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
                spec[key] = os.path.abspath(value)
    return cfg
