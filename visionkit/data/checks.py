"""Checks on a labelled set of image files before training: classes without images, mixed image shapes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionkit.data import DataWarning
from visionkit.data.images import image_header
from visionkit.errors import DataError

# Headers read at most (evenly spaced beyond): about 0.1 ms each, so a check costs ~2 s even on a huge folder.
SCAN_LIMIT = 20_000
PROBES = 8  # distinct shapes run through the transform pipeline to see whether it makes them equal


def warn_empty_classes(names: Sequence[str], labels: Sequence[int], split: str, places: Sequence[str]) -> None:
    """Warn (DataWarning) naming each class that has no sample in this split; places[i] says where class i lives."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    empty = [i for i in range(len(names)) if counts[i] == 0]
    if not empty:
        return
    listed = ", ".join(f"'{names[i]}' ({places[i]})" for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
    if split == "train":
        message = (
            f"data.train: NO training images for {len(empty)} of {len(names)} classes: {listed}. The model cannot "
            "learn a class it never sees, yet the class keeps its output; add images for it, or drop the class "
            "(remove the folder, or its name from the dataset's classes list) if it is not wanted."
        )
    else:
        message = (
            f"data.{split}: no images for {len(empty)} of {len(names)} classes: {listed}. No accuracy is reported "
            "for such a class (null in per_class_accuracy); add images to measure it."
        )
    warnings.warn(message, DataWarning, stacklevel=2)


def _describe(path: Path, shape: tuple[int, int, int]) -> str:
    height, width, channels = shape
    kind = "grey, 1 channel" if channels == 1 else f"{channels} channels"
    return f"'{path}' ({width}x{height} px, {kind})"


def _output_shape(transform: Callable[..., Any] | None, shape: tuple[int, int, int]) -> tuple[int, ...] | None:
    """The shape the pipeline gives an image of `shape` (None when it cannot tell: the pipeline raised)."""
    if transform is None:
        return shape
    try:
        return tuple(transform(image=np.zeros(shape, dtype=np.uint8))["image"].shape)
    except Exception:  # noqa: BLE001 - the real images will say what is wrong; this check only stays silent
        return None


def check_same_shape(
    files: Sequence[Path],
    channels: int | None,
    transform: Callable[..., Any] | None,
    resized: bool,
    split: str,
) -> None:
    """Raise a DataError naming two files whose images would reach a batch with different shapes.

    Reads image headers only. Sizes matter unless `resized` (data.image_size set); the transform pipeline is
    run on blank images of the differing shapes, so a pipeline that crops to a fixed size passes.
    """
    if not files or (resized and channels in (1, 3)):
        return
    step = max(1, -(-len(files) // SCAN_LIMIT))
    first: dict[tuple[int, ...], tuple[Path, tuple[int, int, int]]] = {}
    for path in files[::step]:
        shape = image_header(path, channels)
        # With data.image_size the final resize makes sizes equal: only the channel count can differ.
        first.setdefault(shape[2:] if resized else shape, (path, shape))
    if len(first) < 2:
        return
    found = list(first.values())
    (path, reference), rest = found[0], found[1:]
    # Differing channel counts first: a pipeline never fixes those, so they are the likeliest culprit.
    rest = sorted(rest, key=lambda item: item[1][2] == reference[2])[:PROBES]
    expected = _output_shape(transform, reference)
    for other, shape in rest:
        given = _output_shape(transform, shape)
        if expected is None or given is None or given == expected:
            continue
        sizes = not resized and len({s[:2] for _, s in found}) > 1
        counts = len({s[2] for _, s in found}) > 1
        advice = []
        if sizes:
            advice.append("Set data.image_size: N to resize every image to N x N")
        if counts:
            advice.append(
                f"{'and set' if sizes else 'Set'} data.channels=3 (or 1) to read every image as RGB (or grey)"
            )
        what = " and ".join(w for w, on in (("sizes", sizes), ("channel counts", counts)) if on)
        raise DataError(
            f"data.{split}: images of different {what} cannot be stacked into one batch, e.g. "
            f"{_describe(path, reference)} and {_describe(other, shape)}. {', '.join(advice)}."
        )
