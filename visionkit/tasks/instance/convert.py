"""Dataset converters: COCO JSON <-> Ultralytics YOLO txt (boxes or segment polygons), instance PNGs -> COCO.

A YOLO segment line holds one polygon per object, so a mask of several parts, or with holes, becomes one
polygon whose parts are joined by zero-width cuts (there and back along the same line): filled even-odd, as
pycocotools rasterises, the cuts add no pixels and the holes stay holes. Contours are traced at twice the
mask's resolution, a quarter pixel inside its edge, so every pixel centre of the mask is inside the polygon.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image

from visionkit.data import IMAGE_SUFFIXES
from visionkit.errors import DataError
from visionkit.tasks.detection.coco import coco_records, read_coco_json
from visionkit.tasks.detection.datasets import BoxChecker, check_files_exist, image_size_of
from visionkit.tasks.detection.yolo import yolo_records
from visionkit.tasks.instance.masks import box_of, check_segmentation, decode, encode

CROWD_POLICIES = ("refuse", "skip", "keep")
MASK_FORMATS = ("rle", "polygon")


def mask_polygon(mask: np.ndarray) -> list[float]:
    """One flat polygon [x1, y1, ...] (pixels) covering a mask's pixels: parts and holes joined by zero-width cuts."""
    up = np.kron(np.asarray(mask, np.uint8) > 0, np.ones((2, 2), np.uint8)).astype(np.uint8)
    contours, _ = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = [(c.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0 for c in contours if len(c)]
    if not rings:
        return []
    rings.sort(key=len, reverse=True)
    merged = rings[0]
    for ring in rings[1:]:
        gaps = ((merged[:, None, :] - ring[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(gaps.argmin()), gaps.shape)
        loop = np.concatenate([ring[j:], ring[: j + 1]])
        merged = np.concatenate([merged[: i + 1], loop, merged[i:]])
    return [round(float(v), 3) for v in merged.reshape(-1)]


def place_image(source: Path, target: Path) -> None:
    """`target` made the same file as `source`: a hard link where the file system allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_data_yaml(out: Path, split: str, names: Sequence[str]) -> Path:
    """Add `split: images/<split>` to out/data.yaml (created with `names`; an existing one must name the same)."""
    path = out / "data.yaml"
    data: dict[str, Any] = {"path": ".", "names": list(names)}
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        if list(data.get("names") or []) != list(names):
            raise DataError(
                f"'{path}' already names the classes {data.get('names')}, not {list(names)}: convert into another "
                "folder, or convert the splits from files with the same categories."
            )
    data[split] = f"images/{split}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def coco_to_yolo(
    ann_file: str, image_dir: str, out: str, split: str = "train", segments: bool = False, crowd: str = "refuse"
) -> dict[str, Any]:
    """A COCO split as YOLO txt labels (boxes, or polygons with `segments`) with its images under `out`."""
    if crowd not in CROWD_POLICIES:
        raise DataError(f"crowd is {crowd!r}; accepted: {', '.join(CROWD_POLICIES)}.")
    source = f"'{ann_file}'"
    data = read_coco_json(ann_file, "ann_file")
    crowds = [a for a in data["annotations"] if a.get("iscrowd")]
    if crowds and crowd == "refuse":
        raise DataError(
            f"{source} has {len(crowds)} crowd annotation(s) (iscrowd: 1), e.g. annotation id {crowds[0].get('id')}. "
            "YOLO labels cannot mark a region as 'ignore'. Pass --crowd skip to leave them out (counted in the "
            "report) or --crowd keep to write them as ordinary objects."
        )
    if crowd == "keep":
        for ann in crowds:
            ann["iscrowd"] = 0
    records, names, _ = coco_records(data, Path(image_dir), BoxChecker("clip", source), source)
    check_files_exist(records, f"{source} with --image-dir '{image_dir}'")
    root = Path(out)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd"):
            by_image.setdefault(ann["image_id"], []).append(ann)
    objects = 0
    for rec in records:
        relative = rec.path.relative_to(Path(image_dir))
        place_image(rec.path, root / "images" / split / relative)
        lines = []
        for box, label, ann in zip(rec.boxes, rec.labels, by_image.get(rec.image_id, []), strict=True):
            lines.append(yolo_line(int(label), box, ann, rec.width, rec.height, segments, source))
        label_file = (root / "labels" / split / relative).with_suffix(".txt")
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("".join(f"{line}\n" for line in lines))
        objects += len(lines)
    yaml_path = write_data_yaml(root, split, names)
    skipped = len(crowds) if crowd == "skip" else 0
    return {"images": len(records), "objects": objects, "crowd_skipped": skipped, "data_yaml": str(yaml_path)}


def yolo_line(
    label: int, box: np.ndarray, ann: dict[str, Any], width: int, height: int, segments: bool, source: str
) -> str:
    """One label line: `class cx cy w h` or `class x1 y1 ... xn yn`, normalised to the image."""
    if not segments:
        x1, y1, x2, y2 = (float(v) for v in box)
        values = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
        return " ".join([str(label)] + [f"{v:.6f}" for v in values])
    where = f"{source} annotation id {ann.get('id')}"
    if ann.get("segmentation") is None:
        raise DataError(f"{where} has no 'segmentation'; convert without --segments to write its box.")
    check_segmentation(ann["segmentation"], width, height, where)
    polygon = mask_polygon(decode(ann["segmentation"], height, width))
    if not polygon:
        raise DataError(f"{where}: its segmentation covers no pixel of the image.")
    scale = np.tile([1.0 / width, 1.0 / height], len(polygon) // 2)
    return " ".join([str(label)] + [f"{v:.6f}" for v in np.clip(np.asarray(polygon) * scale, 0.0, 1.0)])


def common_folder(paths: Sequence[Path]) -> Path:
    """The deepest folder holding every path."""
    return Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")


def yolo_to_coco(data_yaml: str, out: str, splits: Sequence[str] = ("train", "val"), segments: bool = False) -> dict:
    """Each split of a YOLO data YAML as out/instances_<split>.json (polygons with `segments`), images in place."""
    report: dict[str, Any] = {}
    for split in splits:
        records, names, _ = yolo_records(data_yaml, split, "clip", with_segments=segments)
        image_dir = common_folder([r.path for r in records]).resolve()
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
        images, annotations = [], []
        for rec in records:
            images.append(
                {"id": rec.image_id, "file_name": str(rec.path.resolve().relative_to(image_dir)),
                 "width": rec.width, "height": rec.height}
            )  # fmt: skip
            parts = rec.segments if segments else [None] * len(rec.labels)
            for box, label, segment in zip(rec.boxes, rec.labels, parts, strict=True):
                x1, y1, x2, y2 = (float(v) for v in box)
                ann = {"id": len(annotations) + 1, "image_id": rec.image_id, "category_id": int(label) + 1,
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}  # fmt: skip
                if segment is not None:
                    ann["segmentation"] = [[round(float(v), 3) for v in p] for p in segment]
                    ann["area"] = int(decode(ann["segmentation"], rec.height, rec.width).sum())
                annotations.append(ann)
        path = Path(out) / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        coco = {"images": images, "annotations": annotations, "categories": categories}
        path.write_text(json.dumps(coco))
        report[split] = {"ann_file": str(path), "image_dir": str(image_dir), "images": len(images),
                         "objects": len(annotations)}  # fmt: skip
    return report


def read_mask(path: Path, width: int, height: int) -> np.ndarray:
    """A mask PNG as an integer array; a DataError naming the file when it is not the image's size."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except OSError as exc:
        raise DataError(f"mask '{path}' cannot be read as an image: {exc}") from exc
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != (height, width):
        raise DataError(
            f"mask '{path}' is {array.shape[1]}x{array.shape[0]} but its image is {width}x{height}; a mask must "
            "have its image's size."
        )
    return array


def image_masks(mask_dir: Path, stem: str, width: int, height: int, names: Sequence[str], divisor: int) -> list:
    """(class index, mask) of one image's instances: a folder of `<class>_<k>.png` files or an id map `<stem>.png`."""
    folder, id_map = mask_dir / stem, mask_dir / f"{stem}.png"
    found: list[tuple[int, np.ndarray]] = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.png")):
            cls = path.stem.rsplit("_", 1)[0]
            index = names.index(cls) if cls in names else int(cls) if cls.isdigit() else -1
            if not 0 <= index < len(names):
                raise DataError(
                    f"mask '{path}': the class part of the name, {cls!r}, is neither one of the names {list(names)} "
                    f"nor an index 0..{len(names) - 1}. Name instance masks '<class>_<k>.png'."
                )
            found.append((index, (read_mask(path, width, height) > 0).astype(np.uint8)))
    elif id_map.is_file():
        ids = read_mask(id_map, width, height).astype(np.int64)
        for value in np.unique(ids[ids > 0]).tolist():
            index = value // divisor
            if index >= len(names):
                raise DataError(
                    f"mask '{id_map}': instance id {value} gives class {index} (id // {divisor}), outside the "
                    f"{len(names)} names; ids are class * {divisor} + instance, 0 is background."
                )
            found.append((index, (ids == value).astype(np.uint8)))
    return found


def masks_to_coco(
    image_dir: str, mask_dir: str, names: Sequence[str], out: str, mask_format: str = "rle", divisor: int = 1000
) -> dict[str, Any]:
    """Instance masks beside images (a PNG per instance or an id map per image) as a COCO instances JSON."""
    if mask_format not in MASK_FORMATS:
        raise DataError(f"mask format is {mask_format!r}; accepted: {', '.join(MASK_FORMATS)}.")
    root, masks_root = Path(image_dir), Path(mask_dir)
    for folder, what in ((root, "image folder"), (masks_root, "mask folder")):
        if not folder.is_dir():
            raise DataError(f"{what} '{folder}' does not exist (relative paths are taken from '{Path.cwd()}').")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    images, annotations, without = [], [], 0
    for image_id, path in enumerate(files, 1):
        width, height = image_size_of(path, f"image folder '{root}'")
        relative = path.relative_to(root)
        images.append({"id": image_id, "file_name": str(relative), "width": width, "height": height})
        found = image_masks(masks_root / relative.parent, path.stem, width, height, names, divisor)
        without += not found
        for index, mask in found:
            box = box_of(mask)
            if box is None:
                continue
            segmentation = encode(mask) if mask_format == "rle" else [mask_polygon(mask)]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": index + 1, "iscrowd": 0,
                 "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "area": int(mask.sum()),
                 "segmentation": segmentation}
            )  # fmt: skip
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return {"ann_file": out, "images": len(images), "objects": len(annotations), "images_without_masks": without}
