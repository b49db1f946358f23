"""Instance masks in COCO form: polygons, merged multi-part polygons, RLE (compressed or not), checked and decoded.

pycocotools does the decoding. Before it, every polygon is checked (at least 3 points, coordinates inside the
image, up to `MARGIN` pixels of slack that annotation tools leave) so a bad annotation stops with its id.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from visionkit.errors import DataError

MARGIN = 1.0  # pixels a polygon vertex may lie outside the image (tools round outwards)


def check_segmentation(segmentation: Any, width: int, height: int, where: str) -> None:
    """Raise a DataError naming `where` for a polygon with < 3 points, a vertex outside the image or a bad RLE."""
    if isinstance(segmentation, Mapping):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2) or counts is None:
            raise DataError(f"{where}: an RLE segmentation needs 'size': [height, width] and 'counts'.")
        if [int(v) for v in size] != [height, width]:
            raise DataError(
                f"{where}: the RLE mask is {size[1]}x{size[0]} (size: [height, width]) but the image is "
                f"{width}x{height}; a mask must have its image's size."
            )
        return
    if not isinstance(segmentation, Sequence) or isinstance(segmentation, str) or not segmentation:
        raise DataError(f"{where}: 'segmentation' must be a list of polygons [x1, y1, x2, y2, ...] or an RLE dict.")
    for k, polygon in enumerate(segmentation):
        if not isinstance(polygon, Sequence) or len(polygon) % 2 or len(polygon) < 6:
            count = len(polygon) / 2 if isinstance(polygon, Sequence) else 0
            raise DataError(
                f"{where}: polygon {k} has {count:g} point(s); a polygon needs at least 3 (x, y) points, "
                "given as a flat list [x1, y1, x2, y2, x3, y3, ...]."
            )
        xy = np.asarray(polygon, np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            raise DataError(f"{where}: polygon {k} has a non-finite coordinate.")
        outside = ((xy < -MARGIN) | (xy > np.array([width, height]) + MARGIN)).any(1)
        if outside.any():
            x, y = xy[int(np.argmax(outside))]
            raise DataError(
                f"{where}: polygon {k} has the point ({x:g}, {y:g}) outside the {width}x{height} image. Fix the "
                "annotation (coordinates are pixels of the image as displayed, EXIF orientation applied)."
            )


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The mask (uint8 0/1, [height, width]) of one COCO segmentation: polygons (parts merged) or RLE."""
    if isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(dict(segmentation), height, width)  # uncompressed RLE (crowds)
    elif isinstance(segmentation, Mapping):
        counts = segmentation["counts"]
        rle = {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in segmentation], height, width))
    with warnings.catch_warnings():  # pycocotools' own numpy-2 copy-keyword note, once per call
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A mask as compressed COCO RLE with its counts as text (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def box_of(mask: np.ndarray) -> list[float] | None:
    """The xyxy pixel box around a mask's pixels, None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
