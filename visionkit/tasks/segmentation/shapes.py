"""Synthetic "shapes" dataset: generated once into the cache as images + PNG masks, read by the folder loader."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from visionkit.data import cache_dir
from visionkit.errors import DataError
from visionkit.registry import DATASETS
from visionkit.tasks.segmentation.datasets import IMAGENET_MEAN, IMAGENET_STD, FolderSegmentationDataset

SHAPE_CLASSES = ("background", "circle", "square", "triangle")
VERSION = 4
DEFAULT_SIZES = {"train": 800, "val": 100}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: smooth colour blotches plus faint stripes, checks or speckle."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    base = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
        pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif kind == 1:
        cell = int(rng.integers(4, 10))
        pattern = ((xx // cell + yy // cell) % 2) * 2 - 1
    else:
        pattern = rng.normal(0, 1, size=(size, size))
    image = base * 0.5 + 64 + rng.uniform(5, 20) * pattern[..., None]
    return np.clip(image, 0, 255)


def _contrasting_color(rng: np.random.Generator, behind: np.ndarray) -> tuple[int, int, int]:
    """A random colour that differs clearly from the mean colour of the pixels it will cover."""
    color = rng.integers(0, 256, size=3)
    for _ in range(20):
        if np.abs(color - behind).sum() > 150:
            break
        color = rng.integers(0, 256, size=3)
    return tuple(int(c) for c in color)


def _shape_polygon(kind: int, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]] | None:
    if kind == 1:
        return None  # circle: drawn as an ellipse
    corners = 4 if kind == 2 else 3
    return [
        (cx + radius * np.cos(angle + 2 * np.pi * k / corners), cy + radius * np.sin(angle + 2 * np.pi * k / corners))
        for k in range(corners)
    ]


def render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image (HxWx3 uint8) and its mask: background clutter, then 1-4 shapes that may occlude each other."""
    image = Image.fromarray(_texture(rng, size).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    scale = size / 64
    # clutter under the shapes: thin lines and small dots that belong to the background class
    for _ in range(int(rng.integers(2, 7))):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            points = [tuple(float(v) for v in rng.uniform(0, size, size=2)) for _ in range(2)]
            draw_image.line(points, fill=color, width=1)
        else:
            x, y = rng.uniform(0, size, size=2)
            r = rng.uniform(1, 2.5) * scale
            draw_image.ellipse([x - r, y - r, x + r, y + r], fill=color)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, len(SHAPE_CLASSES)))
        radius = rng.uniform(10, 16) * scale
        cx, cy = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
        x0, x1 = int(max(cx - radius, 0)), int(min(cx + radius, size))
        y0, y1 = int(max(cy - radius, 0)), int(min(cy + radius, size))
        color = _contrasting_color(rng, np.asarray(image)[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).mean(0))
        angle = (np.pi / 4 if kind == 2 else -np.pi / 2) + rng.uniform(-0.35, 0.35)  # upright, tilted up to 20 degrees
        polygon = _shape_polygon(kind, cx, cy, radius, angle)
        if polygon is None:
            box = [cx - radius, cy - radius, cx + radius, cy + radius]
            draw_image.ellipse(box, fill=color)
            draw_mask.ellipse(box, fill=kind)
        else:
            draw_image.polygon(polygon, fill=color)
            draw_mask.polygon(polygon, fill=kind)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), np.asarray(mask, dtype=np.uint8)


def generate_shapes(folder: Path, num_images: int, size: int, seed: int) -> None:
    """Write `num_images` samples as folder/images/NNNNN.png and folder/masks/NNNNN.png (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rng = np.random.default_rng(seed)
        for index in range(num_images):
            image, mask = render_sample(rng, size)
            Image.fromarray(image).save(tmp / "images" / f"{index:05d}.png")
            Image.fromarray(mask, mode="L").save(tmp / "masks" / f"{index:05d}.png")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():  # another process finished first: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def shapes_folder(split: str, num_images: int, image_size: int, seed: int) -> Path:
    """Cache folder of one generated split, creating it on first use."""
    split_seed = seed * 1000 + (0 if split == "train" else 1)
    folder = cache_dir() / f"seg_shapes_v{VERSION}_{image_size}px_seed{seed}" / f"{split}_{num_images}"
    if not folder.is_dir():
        generate_shapes(folder, num_images, image_size, split_seed)
    return folder


@DATASETS.register("shapes", task="segmentation")
def shapes_dataset(
    split: str = "train",
    num_images: int | None = None,
    image_size: int = 64,
    seed: int = 0,
    transforms: Any = None,
    num_classes: int = len(SHAPE_CLASSES),
    ignore_index: int | None = 255,
    class_names: list[str] | None = None,
    mean: list[float] = IMAGENET_MEAN,
    std: list[float] = IMAGENET_STD,
) -> FolderSegmentationDataset:
    """Synthetic circles/squares/triangles on textured backgrounds (4 classes incl. background)."""
    if num_classes != len(SHAPE_CLASSES):
        raise DataError(
            f"The shapes dataset has {len(SHAPE_CLASSES)} classes ({', '.join(SHAPE_CLASSES)}) but "
            f"data.num_classes is {num_classes}; set data.num_classes={len(SHAPE_CLASSES)}."
        )
    if split not in DEFAULT_SIZES:
        raise DataError(f"The shapes dataset split is {split!r}; accepted: train, val.")
    count = DEFAULT_SIZES[split] if num_images is None else int(num_images)
    if count < 1 or image_size < 16:
        raise DataError(f"The shapes dataset needs num_images >= 1 and image_size >= 16, got {count}, {image_size}.")
    folder = shapes_folder(split, count, image_size, seed)
    return FolderSegmentationDataset(
        str(folder),
        transforms=transforms,
        num_classes=num_classes,
        ignore_index=ignore_index,
        class_names=class_names or list(SHAPE_CLASSES),
        mean=mean,
        std=std,
    )
