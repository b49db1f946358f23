"""COCO JSON detection datasets (pycocotools), with category ids mapped to contiguous labels and back."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
    quiet_coco,
    require_annotations,
)

TASK = "detection"


def read_coco_json(path: str | Path, what: str = "ann_file") -> dict[str, Any]:
    """Read and sanity-check a COCO annotation file; fill optional fields pycocotools needs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist. Give the path of a COCO instances JSON file.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} '{path}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{what} '{path}' has no 'images' list; is it a COCO instances file?")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DataError(f"{what} '{path}' has no 'categories' list; COCO files name their classes there.")
    data.setdefault("annotations", [])
    ids = [c.get("id") for c in data["categories"]]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        raise DataError(f"{what} '{path}': category ids must be distinct integers, got {ids}.")
    for i, ann in enumerate(data["annotations"]):
        # pycocotools' evaluation reads these keys; COCO files always have them, hand-made ones may not
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        if "bbox" in ann and "area" not in ann and len(ann["bbox"]) == 4:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return data


def coco_records(
    data: dict[str, Any], image_dir: Path, checker: BoxChecker, source: str, outside: bool = False, key: str = ""
) -> tuple[list[ImageRecord], list[str], list[int]]:
    """Turn a COCO dict into image records; crowd annotations become ignore regions (not trained on).

    Image files must lie under `image_dir` unless `outside`; an image id given twice is refused. `data` is
    changed to what is trained on (boxes clipped, empty ones dropped), so evaluation scores against the same."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [c["id"] for c in categories]
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    class_names = [str(c.get("name", c["id"])) for c in categories]
    records: dict[int, ImageRecord] = {}
    for img in sorted(data["images"], key=lambda im: im.get("id", -1)):
        if "id" not in img or "file_name" not in img:
            raise DataError(f"{source}: image entry {img} needs 'id' and 'file_name'.")
        if img["id"] in records:
            raise DataError(
                f"{source}: image id {img['id']} is given twice in 'images' ('{records[img['id']].path.name}' and "
                f"'{img['file_name']}'): its annotations would land on one of them. Give every image its own id."
            )
        path = path_in_root(image_dir, str(img["file_name"]), f"{source} image id {img['id']}", outside, key)
        width, height = img.get("width"), img.get("height")
        if not width or not height:
            width, height = image_size_of(path, source)
        records[img["id"]] = ImageRecord(img["id"], path, int(width), int(height))
    boxes: dict[int, list[list[float]]] = {i: [] for i in records}
    labels: dict[int, list[int]] = {i: [] for i in records}
    segments: dict[int, list[Any]] = {i: [] for i in records}
    crowd_boxes: dict[int, list[list[float]]] = {i: [] for i in records}
    crowd_labels: dict[int, list[int]] = {i: [] for i in records}
    for ann in data["annotations"]:
        image_id, cat = ann.get("image_id"), ann.get("category_id")
        where = f"annotation id {ann.get('id')} (image id {image_id})"
        if image_id not in records:
            raise DataError(f"{source}: {where} refers to an image id that is not in 'images'.")
        if cat not in label_of:
            raise DataError(
                f"{source}: {where} has category_id {cat!r}, which is not in 'categories' "
                f"(known ids: {category_ids[:20]}{' ...' if len(category_ids) > 20 else ''})."
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DataError(f"{source}: {where} needs 'bbox': [x, y, width, height], got {bbox!r}.")
        x, y, w, h = (float(v) for v in bbox)
        if ann.get("iscrowd"):
            crowd_boxes[image_id].append([x, y, x + w, y + h])
            crowd_labels[image_id].append(label_of[cat])
            continue
        rec = records[image_id]
        box = checker.check([x, y, x + w, y + h], rec.width, rec.height, f"{where} in '{rec.path.name}'")
        if box is None:
            ann["_visionkit_dropped"] = True  # not trained on: the evaluation's ground truth leaves it out too
        else:
            boxes[image_id].append(box)
            labels[image_id].append(label_of[cat])
            segments[image_id].append(ann.get("segmentation"))
            if box != [x, y, x + w, y + h]:  # clipped: scored as trained
                ann["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    data["annotations"] = [a for a in data["annotations"] if not a.pop("_visionkit_dropped", False)]
    for image_id, rec in records.items():
        rec.boxes = np.asarray(boxes[image_id], np.float32).reshape(-1, 4)
        rec.labels = np.asarray(labels[image_id], np.int64)
        rec.ignore_boxes = np.asarray(crowd_boxes[image_id], np.float32).reshape(-1, 4)
        rec.ignore_labels = np.asarray(crowd_labels[image_id], np.int64)
        rec.segments = segments[image_id]
    return list(records.values()), class_names, category_ids


@DATASETS.register("coco", task=TASK)
def coco_dataset(
    ann_file: str,
    image_dir: str,
    split: str = "train",
    transforms: Sequence[Any] | None = None,
    min_visibility: float = 0.3,
    invalid_boxes: str = "clip",
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """COCO instances JSON + image folder; crowd boxes are ignored in training and kept as COCO eval ignores them."""
    return load_coco(
        ann_file, image_dir, split, transforms, min_visibility, invalid_boxes, check_files, allow_outside_root
    )


def load_coco(
    ann_file: str,
    image_dir: str,
    split: str,
    transforms: Sequence[Any] | None,
    min_visibility: float,
    invalid_boxes: str,
    check_files: bool,
    allow_outside_root: bool,
    kind: type[DetectionDataset] = DetectionDataset,
    check: Callable[[dict[str, Any], list[ImageRecord], str], None] | None = None,
) -> Any:
    """A COCO split as a `kind` dataset; `check(data, records, source)` sees the annotations first (masks)."""
    source = f"data.{split} (coco '{ann_file}')"
    data = read_coco_json(ann_file, f"data.{split}.ann_file")
    checker = BoxChecker(invalid_boxes, source)
    records, class_names, category_ids = coco_records(
        data, Path(image_dir), checker, source, allow_outside_root, f"data.{split}"
    )
    if check is not None:
        check(data, records, source)
    require_annotations(records, source)
    if check_files:
        check_files_exist(records, source)
    checker.report()
    return kind(records, class_names, category_ids, transforms, min_visibility, source, split, coco=quiet_coco(data))
