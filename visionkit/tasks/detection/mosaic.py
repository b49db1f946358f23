"""Mosaic and mixup: training images made of several images of any detection dataset, boxes kept aligned.

Mosaic (YOLOv4, arXiv 2004.10934) puts four images, each scaled so its longer side is `size`, around a random
centre of a 2*size square; a random affine (scale, rotation, shear, translation) then maps that square onto the
size x size training image. Mixup (YOLOX, arXiv 2107.08430) blends two such images and keeps both box sets.
`close_epochs` turns both off for the last epochs of a run (train on whole, undistorted images to finish); the
switch is a function of the epoch the batch belongs to, which the loader passes with each batch, so a resumed
run crosses it exactly as an uninterrupted one.

Randomness comes from Python's and NumPy's global generators, which the loader reseeds per batch in worker
processes and which a checkpoint saves when loading runs in the main process.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visionkit.errors import ConfigError

PAD = 114  # grey fill of the uncovered canvas, the value the YOLO letterbox pads with


@dataclass(frozen=True)
class MosaicOptions:
    """The `data.mosaic` keys: chance per sample, affine jitter ranges, mixup chance and the closing epochs."""

    p: float = 0.0
    close_epochs: int = 0
    scale: tuple[float, float] = (0.5, 1.5)
    translate: float = 0.1
    degrees: float = 0.0
    shear: float = 0.0
    mixup: float = 0.0
    min_visibility: float = 0.1

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> MosaicOptions:
        """Options from the `data.mosaic` mapping, each value checked (the key named when out of range)."""
        opts = dict(node)
        for key in ("p", "mixup", "min_visibility"):
            if not 0.0 <= float(opts[key]) <= 1.0:
                raise ConfigError(f"data.mosaic.{key} is {opts[key]!r}; give a probability in [0, 1].")
        scale = opts["scale"]
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < float(scale[0]) <= float(scale[1])):
            raise ConfigError(f"data.mosaic.scale is {scale!r}; give [low, high] zoom factors with 0 < low <= high.")
        if not 0.0 <= float(opts["translate"]) < 0.5:
            raise ConfigError(
                f"data.mosaic.translate is {opts['translate']!r}; give a fraction of the side in [0, 0.5)."
            )
        for key in ("degrees", "shear"):
            if not 0.0 <= float(opts[key]) <= 45.0:
                raise ConfigError(f"data.mosaic.{key} is {opts[key]!r}; give an angle in degrees in [0, 45].")
        closing = opts["close_epochs"]
        if isinstance(closing, bool) or not isinstance(closing, int) or closing < 0:
            raise ConfigError(f"data.mosaic.close_epochs is {closing!r}; give a number of final epochs >= 0.")
        opts["scale"] = (float(scale[0]), float(scale[1]))
        return cls(**opts)


def affine_matrix(size: int, opts: MosaicOptions) -> np.ndarray:
    """A random 2x3 map from the 2*size mosaic canvas onto the size x size output (centre to centre)."""
    to_origin = np.array([[1, 0, -size], [0, 1, -size], [0, 0, 1]], np.float64)
    angle, zoom = random.uniform(-opts.degrees, opts.degrees), random.uniform(*opts.scale)
    rotate = np.eye(3)
    rotate[:2] = cv2.getRotationMatrix2D((0, 0), angle, zoom)
    shear = np.eye(3)
    shear[0, 1] = math.tan(math.radians(random.uniform(-opts.shear, opts.shear)))
    shear[1, 0] = math.tan(math.radians(random.uniform(-opts.shear, opts.shear)))
    move = np.eye(3)
    move[0, 2] = random.uniform(0.5 - opts.translate, 0.5 + opts.translate) * size
    move[1, 2] = random.uniform(0.5 - opts.translate, 0.5 + opts.translate) * size
    return (move @ shear @ rotate @ to_origin)[:2]


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points [N, 2] through a 2x3 affine map (polygon vertices use this too)."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] xyxy to the boxes enclosing their mapped corners."""
    if not len(boxes):
        return boxes.reshape(0, 4).astype(np.float32)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)
    mapped = transform_points(corners, matrix).reshape(-1, 4, 2)
    return np.concatenate([mapped.min(1), mapped.max(1)], 1).astype(np.float32)


def keep_visible(
    boxes: np.ndarray, before: np.ndarray, size: int, zoom: float, min_visibility: float
) -> tuple[np.ndarray, np.ndarray]:
    """Clip mapped boxes to the output; keep those with >= 2 px sides and `min_visibility` of their mapped area."""
    clipped = boxes.clip(0, size)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area_before = (before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1]) * zoom * zoom
    keep = (w >= 2) & (h >= 2) & (w * h >= min_visibility * np.maximum(area_before, 1e-6))
    return clipped, keep


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A 0/1 mask resized as its image is (linear, so no half-pixel shift against it), thresholded at half."""
    if mask.shape == (height, width):
        return mask
    return (cv2.resize(mask * 255, (width, height), interpolation=cv2.INTER_LINEAR) >= 128).astype(np.uint8)


class MosaicDataset(Dataset):
    """Wraps a DetectionDataset: with chance `p` a sample is a mosaic of four (optionally mixed up with another),
    then the dataset's own transform list (flip, colour jitter...); otherwise the dataset's sample unchanged."""

    def __init__(self, dataset: Any, size: int, opts: MosaicOptions, epochs: int) -> None:
        self.dataset, self.size, self.opts, self.epochs = dataset, size, opts, epochs
        self.epoch = 0
        self.transform = dataset.transform  # the loader reseeds it per batch
        self.records, self.class_names = dataset.records, dataset.class_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # coco, category_ids, source...: the wrapped dataset's
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next samples belong to (the loader passes it with each batch)."""
        self.epoch = epoch

    def active(self, epoch: int | None = None) -> bool:
        """Whether mosaic is on in `epoch` (off for the last `close_epochs` epochs of the run)."""
        epoch = self.epoch if epoch is None else epoch
        return self.opts.p > 0 and epoch < self.epochs - self.opts.close_epochs

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.active() or random.random() >= self.opts.p:
            return self.dataset[index]
        image, boxes, labels, masks = self.mosaic(index)
        if random.random() < self.opts.mixup:
            other, other_boxes, other_labels, other_masks = self.mosaic(random.randrange(len(self)))
            ratio = np.random.beta(32.0, 32.0)
            image = (image * ratio + other * (1 - ratio)).astype(np.uint8)
            boxes, labels = np.concatenate([boxes, other_boxes]), np.concatenate([labels, other_labels])
            masks = None if masks is None else np.concatenate([masks, other_masks])
        rec = self.records[index]
        return self.dataset.augment(image, boxes, labels, masks, rec.image_id, (self.size, self.size))

    def mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One size x size mosaic around `index` and three random images: (RGB uint8, boxes xyxy, labels,
        instance masks uint8 [N, size, size] when the dataset has `load_masks`, else None)."""
        s = self.size
        canvas = np.full((2 * s, 2 * s, 3), PAD, np.uint8)
        cx, cy = (int(random.uniform(0.5 * s, 1.5 * s)) for _ in range(2))
        all_boxes, all_labels, all_masks = [], [], []
        with_masks = callable(getattr(self.dataset, "load_masks", None))
        indices = [index] + [random.randrange(len(self)) for _ in range(3)]
        for corner, i in enumerate(indices):
            image, rec = self.dataset.load_image(i), self.records[i]
            ratio = s / max(image.shape[:2])
            h, w = max(1, round(image.shape[0] * ratio)), max(1, round(image.shape[1] * ratio))
            if (h, w) != image.shape[:2]:
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR)
            x0 = cx - w if corner in (0, 2) else cx  # top-left, top-right, bottom-left, bottom-right
            y0 = cy - h if corner in (0, 1) else cy
            # the part of the image that falls on the canvas
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, 2 * s), min(y0 + h, 2 * s)
            canvas[cy0:cy1, cx0:cx1] = image[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            if len(rec.boxes):
                scale = np.array([w / rec.width, h / rec.height] * 2)
                all_boxes.append(np.asarray(rec.boxes, np.float64) * scale + np.array([x0, y0] * 2))
                all_labels.append(np.asarray(rec.labels, np.int64))
            if with_masks and len(rec.boxes):
                for mask in self.dataset.load_masks(i):  # placed exactly as the image
                    placed = np.zeros((2 * s, 2 * s), np.uint8)
                    resized = _resize_mask(mask, w, h)
                    placed[cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
                    all_masks.append(placed)
        boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4))
        labels = np.concatenate(all_labels) if all_labels else np.zeros((0,), np.int64)
        masks = np.stack(all_masks) if all_masks else (np.zeros((0, 2 * s, 2 * s), np.uint8) if with_masks else None)
        boxes, visible = keep_visible(boxes, boxes, 2 * s, 1.0, 0.0)  # clip to the canvas first
        boxes, labels = boxes[visible], labels[visible]
        matrix = affine_matrix(s, self.opts)
        image = cv2.warpAffine(canvas, matrix, (s, s), flags=cv2.INTER_LINEAR, borderValue=(PAD, PAD, PAD))
        mapped = transform_boxes(boxes, matrix)
        zoom = float(math.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        mapped, keep = keep_visible(mapped, boxes, s, zoom, self.opts.min_visibility)
        if masks is not None:
            masks = masks[visible][keep]
            warped = [cv2.warpAffine(m * 255, matrix, (s, s), flags=cv2.INTER_LINEAR) >= 128 for m in masks]
            masks = np.stack(warped).astype(np.uint8) if warped else np.zeros((0, s, s), np.uint8)
        return image, mapped[keep], labels[keep], masks
