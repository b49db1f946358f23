"""Drawing instances: each mask blended in a colour of its own, boxes with class and score on top."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from visionkit.tasks.detection.visualize import draw_boxes

MASK_ALPHA = 0.45


def instance_color(index: int) -> np.ndarray:
    """A distinct colour per instance (golden-ratio hues, two brightness levels)."""
    hue = (0.11 + index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0 if index % 2 == 0 else 0.75)
    return np.array([r, g, b]) * 255.0


def draw_instances(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    gt_boxes: np.ndarray | None = None,
    min_side: int = 256,
) -> Image.Image:
    """The image with every mask ([H, W] 0/1) tinted in its instance's colour, then boxes labelled by class."""
    pixels = np.asarray(image, np.float64).copy()
    for k, mask in enumerate(masks):
        on = np.asarray(mask, bool)
        pixels[on] = pixels[on] * (1 - MASK_ALPHA) + instance_color(k) * MASK_ALPHA
    tinted = pixels.clip(0, 255).astype(np.uint8)
    return draw_boxes(tinted, boxes, labels, scores, class_names, gt_boxes=gt_boxes, min_side=min_side)
