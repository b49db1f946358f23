"""Drawing boxes: predictions in per-class colours with scores, ground truth in green, and sample grids."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

GT_COLOR = (0, 255, 0)
LABEL_HEIGHT = 11  # pixels of a label's band (PIL's default font)


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per class (golden-ratio hues, skipping the green used for ground truth)."""
    hue = (0.0 + label * 0.618033988749895) % 1.0
    if 0.25 < hue < 0.42:  # keep clear of ground-truth green
        hue = (hue + 0.2) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _name(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names and 0 <= label < len(class_names) else str(label)


def draw_boxes(
    image: np.ndarray | Image.Image,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    gt_boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
    min_side: int = 256,
) -> Image.Image:
    """Draw ground truth (green, thin) and predictions (class colour, label and score) on an upscaled copy."""
    im = image.copy() if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    im = im.convert("RGB")
    scale = max(1.0, min_side / max(1, min(im.size)))
    if scale > 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for box in np.asarray(gt_boxes if gt_boxes is not None else [], np.float32).reshape(-1, 4):
        draw.rectangle([float(v) * scale for v in box], outline=GT_COLOR, width=1)
    scores = list(scores) if scores is not None else [None] * len(labels)
    for box, label, score in zip(np.asarray(boxes, np.float32).reshape(-1, 4), labels, scores, strict=True):
        color = class_color(int(label))
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = _name(int(label), class_names) + (f" {score:.2f}" if score is not None else "")
        tx, ty = label_position(x1, y1, y2, 6 * len(text) + 2, im.width, im.height)
        draw.rectangle([tx - 1, ty, tx + 6 * len(text) + 1, ty + LABEL_HEIGHT - 1], fill=(0, 0, 0))
        draw.text((tx, ty - 1), text, fill=color)
    return im


def label_position(x1: float, y1: float, y2: float, width: float, im_w: int, im_h: int) -> tuple[float, float]:
    """Where a box's label goes: above the box where it fits, else below it, else inside its top edge."""
    tx = min(max(0.0, x1), max(0.0, im_w - width))
    if y1 - LABEL_HEIGHT >= 0:
        return tx, y1 - LABEL_HEIGHT
    if y2 + LABEL_HEIGHT <= im_h:
        return tx, y2 + 1
    return tx + 1, max(0.0, y1)


def grid(images: Sequence[Image.Image], columns: int = 4, gap: int = 2) -> Image.Image:
    """Tile images left to right, top to bottom on a dark background."""
    if not images:
        return Image.new("RGB", (1, 1))
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    cw, ch = max(i.width for i in images), max(i.height for i in images)
    canvas = Image.new("RGB", (cols * (cw + gap) + gap, rows * (ch + gap) + gap), (32, 32, 32))
    for k, im in enumerate(images):
        canvas.paste(im, (gap + (k % cols) * (cw + gap), gap + (k // cols) * (ch + gap)))
    return canvas
