"""Synthetic "shapes" detection data, generated once into the cache folder as COCO JSON + PNG images."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from visionkit.data import cache_dir
from visionkit.errors import ConfigError
from visionkit.registry import DATASETS
from visionkit.tasks.detection.coco import coco_dataset
from visionkit.tasks.detection.datasets import DetectionDataset

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "star", "diamond")
VERSION = 1
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges that match the float boxes


def _polygon(kind: str, cx: float, cy: float, w: float, h: float) -> list[tuple[float, float]]:
    """Corner points of a shape filling the box centred at (cx, cy) of size w x h."""
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if kind == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if kind == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if kind == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if kind == "cross":
        tw, th = w / 6, h / 6
        return [
            (cx - tw, y0),
            (cx + tw, y0),
            (cx + tw, cy - th),
            (x1, cy - th),
            (x1, cy + th),
            (cx + tw, cy + th),
            (cx + tw, y1),
            (cx - tw, y1),
            (cx - tw, cy + th),
            (x0, cy + th),
            (x0, cy - th),
            (cx - tw, cy - th),
        ]
    if kind == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((math.cos(a) * r, math.sin(a) * r))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        sx, sy = w / (max(xs) - min(xs)), h / (max(ys) - min(ys))
        return [(x0 + (px - min(xs)) * sx, y0 + (py - min(ys)) * sy) for px, py in pts]
    raise ValueError(kind)


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area (so a small shape is never hidden under a big one)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> tuple[int, int, int]:
    """A colour far enough from `avoid` (the local background) to be seen."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if avoid is None or np.abs(c.astype(int) - avoid.astype(int)).sum() > 180:
            break
    return tuple(int(v) for v in c)


def render_image(
    rng: np.random.Generator, p: dict[str, Any], masks: list[np.ndarray] | None = None
) -> tuple[Image.Image, list[tuple[list[float], int]]]:
    """Draw one image; return it and its (box xyxy, class index) objects. With a `masks` list, it receives
    each object's visible pixels (bool [H, W]; covered at least half, later objects occluding earlier ones)."""
    size, s = p["image_size"], SUPERSAMPLE
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1)
    canvas = Image.fromarray(background.astype(np.uint8)).resize((size * s, size * s), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for _ in range(p["clutter"]):  # thin lines and small dots that are not objects
        x, y = rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            dx, dy = rng.uniform(-size / 3, size / 3, 2)
            draw.line([(x * s, y * s), ((x + dx) * s, (y + dy) * s)], fill=_colour(rng), width=int(s * 1))
        else:
            r = rng.uniform(1, max(1.5, p["min_size"] / 5))
            draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=_colour(rng))
    objects: list[tuple[list[float], int]] = []
    for _ in range(int(rng.integers(p["min_objects"], p["max_objects"] + 1))):
        for _attempt in range(30):
            side = rng.uniform(p["min_size"], p["max_size"])
            aspect = rng.uniform(0.75, 1.33)
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            w, h = min(w, size - 2), min(h, size - 2)
            cx, cy = rng.uniform(w / 2 + 1, size - w / 2 - 1), rng.uniform(h / 2 + 1, size - h / 2 - 1)
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            if all(_overlap(box, other) <= p["max_overlap"] for other, _ in objects):
                break
        else:
            continue
        cls = int(rng.integers(0, p["num_classes"]))
        kind = SHAPE_CLASSES[cls]
        local = background[int(cy) % size, int(cx) % size]
        fill = _colour(rng, local)
        scaled = [v * s for v in box]
        drawn = [draw] if masks is None else [draw, ImageDraw.Draw(shapes := Image.new("L", canvas.size, 0))]
        for pen, colour in zip(drawn, (fill, 255), strict=False):
            if kind == "circle":
                pen.ellipse(scaled, fill=colour)
            else:
                pen.polygon([(x * s, y * s) for x, y in _polygon(kind, cx, cy, w, h)], fill=colour)
        if masks is not None:
            own = np.asarray(shapes) > 0
            for earlier in masks:  # supersampled until the end: a later shape hides what it covers
                earlier &= ~own
            masks.append(own)
        objects.append((box, cls))
    if masks:  # a pixel is the shape's that covers most of it (the later on a tie), when that is half or more
        cover = np.stack([full.reshape(size, s, size, s).mean((1, 3)) for full in masks])
        winner = len(masks) - 1 - np.argmax(cover[::-1], axis=0)
        masks[:] = [(winner == i) & (cover[i] >= 0.5) for i in range(len(masks))]
    image = canvas.resize((size, size), Image.BOX)
    noise = rng.normal(0, p["noise"], (size, size, 3))
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
    return image, objects


def box_annotation(box: list[float], cls: int, mask: np.ndarray | None) -> dict[str, Any] | None:
    """A shape's COCO annotation fields from its drawn float box (rounded to 0.01 px)."""
    x, y = round(box[0], 2), round(box[1], 2)
    w, h = round(box[2] - box[0], 2), round(box[3] - box[1], 2)
    return {"category_id": cls + 1, "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0}


def generate(root: Path, params: dict[str, Any], annotate: Any = box_annotation, masks: bool = False) -> None:
    """Write train/ and val/ image folders and annotations_{train,val}.json under root; `annotate(box, class,
    mask)` makes each object's fields (None: left out), given its visible mask when `masks`."""
    categories = [
        {"id": i + 1, "name": SHAPE_CLASSES[i], "supercategory": "shape"} for i in range(params["num_classes"])
    ]
    for split, count, seed_offset in (("train", params["num_train"], 0), ("val", params["num_val"], 10_000_019)):
        rng = np.random.default_rng(params["seed"] + seed_offset)
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(count):
            drawn: list[np.ndarray] | None = [] if masks else None
            image, objects = render_image(rng, params, drawn)
            name = f"{i:06d}.png"
            image.save(root / split / name)
            images.append({"id": i + 1, "file_name": name, "width": image.width, "height": image.height})
            for k, (box, cls) in enumerate(objects):
                fields = annotate(box, cls, drawn[k] if drawn is not None else None)
                if fields is not None:
                    annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **fields})
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / f"annotations_{split}.json").write_text(json.dumps(data))


def shapes_root(params: dict[str, Any], write: Any = None, name: str = "shapes") -> Path:
    """The cache folder for these parameters, generated on first use by `write(folder, params)` (default:
    `generate`; safe when several ranks race)."""
    write = write or generate
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir() / f"{name}-v{VERSION}-{key}"
    if (root / "annotations_val.json").is_file():
        return root
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp / "data", params)
        (tmp / "data" / "params.json").write_text(json.dumps(params, indent=1))
        try:
            os.replace(tmp / "data", root)
        except OSError:
            if not (root / "annotations_val.json").is_file():  # not another rank's finished copy: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def shapes_params(
    image_size: int, num_classes: int, num_train: int, num_val: int, min_objects: int, max_objects: int,
    min_size: float, max_size: float, max_overlap: float, clutter: int, noise: float, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The generator's parameters, checked (a ConfigError names the bad pair); they key the cache folder."""
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ConfigError(f"shapes num_classes is {num_classes}; accepted 1..{len(SHAPE_CLASSES)} ({SHAPE_CLASSES}).")
    if not 0 < min_size <= max_size < image_size:
        raise ConfigError(
            f"shapes needs 0 < min_size <= max_size < image_size; got {min_size}, {max_size}, {image_size}."
        )
    if not 0 <= min_objects <= max_objects or max_objects < 1:
        raise ConfigError(
            f"shapes needs 0 <= min_objects <= max_objects and max_objects >= 1; got {min_objects}, {max_objects}."
        )
    return {
        "image_size": image_size,
        "num_classes": num_classes,
        "num_train": num_train,
        "num_val": num_val,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "min_size": float(min_size),
        "max_size": float(max_size),
        "max_overlap": max_overlap,
        "clutter": clutter,
        "noise": noise,
        "seed": seed,
    }


@DATASETS.register("shapes", task="detection")
def shapes_dataset(
    split: str = "train",
    transforms: Sequence[Any] | None = None,
    min_visibility: float = 0.3,
    image_size: int = 128,
    num_classes: int = 4,
    num_train: int = 2000,
    num_val: int = 200,
    min_objects: int = 1,
    max_objects: int = 5,
    min_size: float = 12.0,
    max_size: float = 56.0,
    max_overlap: float = 0.3,
    clutter: int = 6,
    noise: float = 6.0,
    seed: int = 0,
) -> DetectionDataset:
    """Coloured shapes (circle, square, triangle, cross, star, diamond) with clutter and overlaps, as COCO."""
    if split not in ("train", "val"):
        raise ConfigError(f"shapes split is {split!r}; accepted: train, val.")
    params = shapes_params(
        image_size, num_classes, num_train, num_val, min_objects, max_objects, min_size, max_size, max_overlap,
        clutter, noise, seed,
    )  # fmt: skip
    root = shapes_root(params)
    return coco_dataset(
        str(root / f"annotations_{split}.json"),
        str(root / split),
        split=split,
        transforms=transforms,
        min_visibility=min_visibility,
    )
