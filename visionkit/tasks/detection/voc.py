"""Pascal VOC detection data: Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionkit.data import path_in_root
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
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _text(node: ET.Element, tag: str, where: str) -> str:
    found = node.find(tag)
    if found is None or found.text is None:
        raise DataError(f"{where}: missing <{tag}>.")
    return found.text.strip()


def parse_voc_xml(
    path: Path,
    image_dir: Path,
    class_index: dict[str, int],
    checker: BoxChecker,
    image_id: int,
    outside: bool = False,
    key: str = "",
) -> ImageRecord:
    """One annotation file as a record; `difficult` objects become ignore regions (see voc_dataset).

    Its `<filename>` must lie under `image_dir` unless `outside`."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"VOC annotation '{path}' is not valid XML: {exc}") from exc
    name = root.findtext("filename") or f"{path.stem}.jpg"
    image = path_in_root(image_dir, name.strip(), f"VOC annotation '{path}'", outside, key)
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    else:
        width, height = image_size_of(image, f"VOC annotation '{path}'")
    rec = ImageRecord(image_id, image, width, height)
    groups: dict[bool, tuple[list[list[float]], list[int]]] = {False: ([], []), True: ([], [])}
    for k, obj in enumerate(root.iter("object"), 1):
        where = f"'{path}' object {k}"
        cls = _text(obj, "name", where)
        if cls not in class_index:
            raise DataError(
                f"{where}: class '{cls}' is not in the class list ({', '.join(class_index)}). "
                "Set data.class_names to the classes of this dataset."
            )
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{where}: missing <bndbox>.")
        try:
            x1, y1, x2, y2 = (float(_text(bnd, t, where)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise DataError(f"{where}: <bndbox> values must be numbers: {exc}") from exc
        # VOC pixel indices are 1-based and inclusive: [xmin - 1, xmax] is the box in continuous coordinates
        box = checker.check([x1 - 1, y1 - 1, x2, y2], width, height, where)
        if box is not None:
            groups[difficult][0].append(box)
            groups[difficult][1].append(class_index[cls])
    rec.boxes = np.asarray(groups[False][0], np.float32).reshape(-1, 4)
    rec.labels = np.asarray(groups[False][1], np.int64)
    rec.ignore_boxes = np.asarray(groups[True][0], np.float32).reshape(-1, 4)
    rec.ignore_labels = np.asarray(groups[True][1], np.int64)
    return rec


@DATASETS.register("voc", task=TASK)
def voc_dataset(
    root: str,
    split: str = "train",
    image_set: str | None = None,
    class_names: list[str] | None = None,
    use_difficult: bool = False,
    transforms: Sequence[Any] | None = None,
    min_visibility: float = 0.3,
    invalid_boxes: str = "clip",
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Pascal VOC layout; `difficult` objects are not trained on and are ignored in eval (unless use_difficult)."""
    base = Path(root)
    image_set = image_set or split
    listing = base / "ImageSets" / "Main" / f"{image_set}.txt"
    source = f"data.{split} (voc '{root}' image set '{image_set}')"
    if not listing.is_file():
        raise DataError(f"{source}: image list '{listing}' does not exist; set image_set to a file in ImageSets/Main.")
    names = list(class_names or VOC_CLASSES)
    class_index = {n: i for i, n in enumerate(names)}
    checker = BoxChecker(invalid_boxes, source)
    records = []
    for i, stem in enumerate(s.split()[0] for s in listing.read_text().splitlines() if s.strip()):
        xml = path_in_root(base / "Annotations", f"{stem}.xml", f"{source}: '{listing}'", allow_outside_root)
        if not xml.is_file():
            raise DataError(f"{source}: annotation '{xml}' listed in '{listing}' does not exist.")
        key = f"data.{split}"
        rec = parse_voc_xml(xml, base / "JPEGImages", class_index, checker, i + 1, allow_outside_root, key)
        if use_difficult and len(rec.ignore_boxes):
            rec.boxes = np.concatenate([rec.boxes, rec.ignore_boxes])
            rec.labels = np.concatenate([rec.labels, rec.ignore_labels])
            rec.ignore_boxes, rec.ignore_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        records.append(rec)
    require_annotations(records, source)
    if check_files:
        check_files_exist(records, source)
    checker.report()
    return DetectionDataset(records, names, list(range(1, len(names) + 1)), transforms, min_visibility, source, split)
