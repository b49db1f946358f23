"""YOLO-format detection data: a data YAML naming splits and classes, one `cls cx cy w h` txt file per image."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from visionkit.data import IMAGE_SUFFIXES, DataWarning, skip_hidden
from visionkit.errors import DataError
from visionkit.registry import DATASETS
from visionkit.tasks.detection.datasets import (
    BoxChecker,
    DetectionDataset,
    ImageRecord,
    check_files_exist,
    image_size_of,
    require_annotations,
)

TASK = "detection"


def read_data_yaml(path: str | Path) -> tuple[dict[str, Any], Path, list[str]]:
    """Read an Ultralytics-style data YAML; return it, the dataset root and the class names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"YOLO data YAML '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"YOLO data YAML '{path}' is not valid YAML: {exc}") from exc
    names = data.get("names")
    if isinstance(names, dict):
        by_index = {int(k): v for k, v in names.items() if str(k).isdigit()}
        if sorted(by_index) != list(range(len(names))):
            raise DataError(f"YOLO data YAML '{path}': 'names' keys must be 0..N-1, got {list(names)}.")
        names = [by_index[k] for k in range(len(by_index))]
    if not isinstance(names, list) or not names:
        raise DataError(f"YOLO data YAML '{path}' needs 'names': a list (or 0..N-1 mapping) of class names.")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"YOLO data YAML '{path}': nc is {data['nc']} but 'names' lists {len(names)} classes.")
    root = Path(data.get("path") or ".")
    if not root.is_absolute():
        root = path.parent / root
    return data, root, [str(n) for n in names]


def split_images(entry: Any, root: Path, source: str) -> list[Path]:
    """Image paths of a split entry: a folder, a .txt list of images, or a list of those."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        p = Path(item)
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += skip_hidden(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES), p, source)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (p.parent / q))
        else:
            raise DataError(f"{source}: split entry '{item}' (resolved to '{p}') is neither a folder nor a .txt list.")
    return images


def label_path(image: Path) -> Path:
    """Ultralytics rule: the last `images` folder of the path becomes `labels`, the extension `.txt`."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(".txt")


def parse_label_file(
    path: Path, width: int, height: int, num_classes: int, checker: BoxChecker, segments: list[Any] | None = None
) -> tuple[list[list[float]], list[int]]:
    """Boxes (xyxy pixels) and class indices of one label file; polygon lines become their bounding box. With a
    `segments` list (instance data) every line must be a polygon, which it receives in pixels, COCO style."""
    boxes, labels = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"'{path}' line {lineno}"
        try:
            values = [float(v) for v in parts]
        except ValueError as exc:
            raise DataError(f"{where}: expected numbers 'class cx cy w h', got {line!r}.") from exc
        if segments is not None and len(values) < 7:
            raise DataError(
                f"{where}: instance segmentation needs a polygon per object, 'class x1 y1 x2 y2 x3 y3 ...' "
                f"(normalised, at least 3 points), got {len(values)} values."
            )
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        elif len(values) >= 7 and len(values) % 2 == 1:  # segmentation polygon: class x1 y1 x2 y2 ...
            xs, ys = values[1::2], values[2::2]
            box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
        else:
            raise DataError(f"{where}: expected 'class cx cy w h' (5 values), got {len(values)} values.")
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
            raise DataError(
                f"{where}: class index {parts[0]} is not one of the data YAML's {num_classes} classes "
                f"(0..{num_classes - 1})."
            )
        polygon = [v * (width if k % 2 == 0 else height) for k, v in enumerate(values[1:])]
        if segments is not None:
            check_polygon(polygon, width, height, where)
        checked = checker.check(box, width, height, where)
        if checked is not None:
            boxes.append(checked)
            labels.append(int(cls))
            if segments is not None:
                segments.append([polygon])
    return boxes, labels


def check_polygon(polygon: list[float], width: int, height: int, where: str) -> None:
    """A DataError naming `where` for a vertex more than a pixel outside the image (normalised 0..1 labels)."""
    xy = np.asarray(polygon, np.float64).reshape(-1, 2)
    outside = ((xy < -1.0) | (xy > np.array([width, height]) + 1.0)).any(1)
    if outside.any():
        x, y = xy[int(np.argmax(outside))]
        raise DataError(
            f"{where}: polygon point ({x / width:g}, {y / height:g}) lies outside the image; YOLO segment labels "
            "are normalised to 0..1 of the image's width and height."
        )


def warn_unused_labels(images: Sequence[Path], source: str) -> None:
    """A DataWarning counting the label files of the split's label folders that belong to no image."""
    used = {label_path(image) for image in images}
    folders = sorted({p.parent for p in used if p.parent.is_dir()})
    unused = [f for folder in folders for f in sorted(folder.glob("*.txt")) if f not in used]
    if unused:
        warnings.warn(
            f"{source}: {len(unused)} label file(s) have no image and are not used, e.g. '{unused[0]}' (an image "
            "with another extension, or one that was deleted?).",
            DataWarning,
            stacklevel=3,
        )


@DATASETS.register("yolo", task=TASK)
def yolo_dataset(
    data_yaml: str,
    split: str = "train",
    transforms: Sequence[Any] | None = None,
    min_visibility: float = 0.3,
    invalid_boxes: str = "clip",
) -> DetectionDataset:
    """YOLO txt labels (normalised cx cy w h per line) found next to `images/` as `labels/`; no file = no objects."""
    records, names, source = yolo_records(data_yaml, split, invalid_boxes, with_segments=False)
    return DetectionDataset(records, names, list(range(1, len(names) + 1)), transforms, min_visibility, source, split)


def yolo_records(
    data_yaml: str, split: str, invalid_boxes: str, with_segments: bool
) -> tuple[list[ImageRecord], list[str], str]:
    """The records of a YOLO-layout split (with each object's polygon when `with_segments`), names, source."""
    data, root, names = read_data_yaml(data_yaml)
    source = f"data.{split} (yolo '{data_yaml}' split '{split}')"
    if split not in data:
        raise DataError(f"{source}: the data YAML has no '{split}' entry (it has {sorted(data)}).")
    images = split_images(data[split], root, source)
    check_files_exist([ImageRecord(0, p, 0, 0) for p in images], source)  # sizes come from the image headers
    checker = BoxChecker(invalid_boxes, source)
    records = []
    for i, image in enumerate(images):
        width, height = image_size_of(image, source)
        rec = ImageRecord(i + 1, image, width, height)
        labels_file = label_path(image)
        if labels_file.is_file():
            segments: list[Any] | None = [] if with_segments else None
            boxes, labels = parse_label_file(labels_file, width, height, len(names), checker, segments)
            rec.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            rec.labels = np.asarray(labels, np.int64)
            rec.segments = segments or []
        records.append(rec)
    warn_unused_labels(images, source)
    require_annotations(records, source)
    checker.report()
    return records, names, source
