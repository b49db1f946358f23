"""Small detection datasets written into a test's tmp_path (COCO, YOLO, VOC) and a direct pycocotools scorer."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A random RGB PNG (or JPEG by suffix) of the given size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def coco_dict() -> dict[str, Any]:
    """Three images (one without objects), non-contiguous category ids, one crowd box."""
    images = [
        {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 20, "file_name": "b.png", "width": 40, "height": 56},
        {"id": 30, "file_name": "empty.png", "width": 32, "height": 32},
    ]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 6, 20, 16], "area": 320, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 10, 24, 30], "area": 720, "iscrowd": 0},
        {"id": 3, "image_id": 20, "category_id": 11, "bbox": [2, 2, 30, 40], "area": 1200, "iscrowd": 0},
        {"id": 4, "image_id": 20, "category_id": 3, "bbox": [0, 44, 40, 12], "area": 480, "iscrowd": 1},
        {"id": 5, "image_id": 10, "category_id": 3, "bbox": [40, 2, 10, 6], "area": 60, "iscrowd": 0},
    ]
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 11, "name": "bird"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(root: Path, data: dict[str, Any] | None = None, skip_images: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write annotations.json and the images it names; return (ann_file, image_dir)."""
    data = coco_dict() if data is None else data
    image_dir = root / "images"
    for k, im in enumerate(data["images"]):
        if im["file_name"] not in skip_images:
            write_image(image_dir / im["file_name"], im["width"], im["height"], seed=k)
    image_dir.mkdir(parents=True, exist_ok=True)
    ann = root / "annotations.json"
    ann.write_text(json.dumps(data))
    return ann, image_dir


def write_yolo(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]], names: Any = None) -> Path:
    """images/{train,val}/x.png + labels/.../x.txt and data.yaml; labels maps 'train/x' to file text."""
    for key, (w, h) in sizes.items():
        write_image(root / "images" / f"{key}.png", w, h)
    for key, text in labels.items():
        path = root / "labels" / f"{key}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    names = names if names is not None else ["red", "green", "blue"]
    spec = {"path": ".", "train": "images/train", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


def voc_xml(filename: str, width: int | None, height: int | None, objects: list[tuple[str, list[float], int]]) -> str:
    """A VOC annotation; objects are (name, [xmin, ymin, xmax, ymax], difficult)."""
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if width else ""
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><filename>{filename}</filename>{size}{objs}</annotation>"


def write_voc(
    root: Path, entries: dict[str, tuple[int, int, list[tuple[str, list[float], int]]]], image_set: str = "train"
) -> Path:
    """VOC layout under root; entries maps image stem to (width, height, objects)."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for stem, (w, h, objects) in entries.items():
        write_image(root / "JPEGImages" / f"{stem}.png", w, h)
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", w, h, objects))
    (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(entries) + "\n")
    return root


def pycocotools_stats(ann_file: Path, results: list[dict[str, Any]]) -> np.ndarray:
    """COCOeval stats straight from pycocotools (the reference), on an annotation file and result list."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats
