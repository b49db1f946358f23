"""Colour palettes, mask overlays and sample grids for segmentation outputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IGNORE_COLOR = (255, 255, 255)


def class_palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class index (PASCAL VOC's bit-interleaved scheme); class 0 is black."""
    colors = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for index in range(num_classes):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors[index] = (r, g, b)
    return colors


def colorize(mask: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Turn an HxW array of class indices into an HxWx3 uint8 colour image."""
    palette = class_palette(num_classes)
    safe = np.clip(mask, 0, num_classes - 1)
    out = palette[safe]
    if ignore_index is not None:
        out[mask == ignore_index] = IGNORE_COLOR
    return out


def overlay(
    image: np.ndarray, mask: np.ndarray, num_classes: int, ignore_index: int | None = 255, alpha: float = 0.5
) -> np.ndarray:
    """Blend class colours over an HxWx3 uint8 image; background (class 0) is left untinted."""
    colors = colorize(mask, num_classes, ignore_index).astype(np.float32)
    tint = mask != 0
    out = image.astype(np.float32)
    out[tint] = (1 - alpha) * out[tint] + alpha * colors[tint]
    return out.round().clip(0, 255).astype(np.uint8)


def index_png(mask: np.ndarray, num_classes: int) -> Image.Image:
    """A mode-P image whose pixel values are the class indices, coloured with the class palette."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:num_classes] = class_palette(num_classes)
    palette[255] = IGNORE_COLOR
    img.putpalette(palette.reshape(-1).tolist())
    return img


def save_index_png(mask: np.ndarray, path: str | Path, num_classes: int) -> None:
    """Write a palette PNG whose pixel values are the class indices (readable by the folder loader)."""
    index_png(mask, num_classes).save(path)


def sample_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    ignore_index: int | None,
    alpha: float = 0.5,
    class_names: Sequence[str] | None = None,
) -> Image.Image:
    """Grid with one row per sample: image | ground-truth overlay | prediction overlay, plus a legend."""
    cells = []
    for image, target, pred in rows:
        truth = overlay(image, target, num_classes, ignore_index, alpha)
        cells.append([image, truth, overlay(image, pred, num_classes, None, alpha)])
    height = max(c[0].shape[0] for c in cells)
    width = max(c[0].shape[1] for c in cells)
    gap, header, line = 2, 14, 14
    canvas_width = 3 * width + 4 * gap
    legend = _legend_layout(class_names or [], canvas_width - gap)
    legend_height = (max(y for _, _, y in legend) + line) if legend else 0
    grid_height = header + len(cells) * (height + gap)
    canvas = Image.new("RGB", (canvas_width, grid_height + gap + legend_height), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("image", "target", "prediction")):
        draw.text((gap + col * (width + gap), 1), title, fill=(230, 230, 230))
    for row, triple in enumerate(cells):
        for col, cell in enumerate(triple):
            canvas.paste(Image.fromarray(cell), (gap + col * (width + gap), header + row * (height + gap)))
    palette = class_palette(num_classes)
    for index, (name, x, y) in enumerate(legend):
        top = grid_height + gap + y
        draw.rectangle([gap + x, top + 2, gap + x + 8, top + 10], fill=tuple(int(v) for v in palette[index]))
        draw.text((gap + x + 11, top), name, fill=(230, 230, 230))
    return canvas


def _legend_layout(names: Sequence[str], width: int, line: int = 14) -> list[tuple[str, int, int]]:
    """(name, x, y) of each legend entry, wrapped onto new lines at `width` pixels."""
    out, x, y = [], 0, 0
    for name in map(str, names):
        size = 16 + 6 * len(name)
        if x and x + size > width:
            x, y = 0, y + line
        out.append((name, x, y))
        x += size
    return out


def with_legend(
    picture: np.ndarray, mask: np.ndarray, num_classes: int, class_names: Sequence[str] | None, min_side: int = 0
) -> Image.Image:
    """An overlay scaled up (nearest) to a shorter side of at least `min_side`, with a legend band below naming
    the classes present in `mask` in their colours."""
    im = Image.fromarray(picture)
    scale = max(1.0, min_side / max(1, min(im.size))) if min_side else 1.0
    if scale > 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.NEAREST)
    present = [int(c) for c in np.unique(mask) if 0 <= c < num_classes]
    names = [str(class_names[c]) if class_names and c < len(class_names) else str(c) for c in present]
    layout = _legend_layout(names, max(im.width - 4, 40))
    band = (max(y for _, _, y in layout) + 16) if layout else 0
    canvas = Image.new("RGB", (im.width, im.height + band), (32, 32, 32))
    canvas.paste(im, (0, 0))
    draw = ImageDraw.Draw(canvas)
    palette = class_palette(num_classes)
    for cls, (name, x, y) in zip(present, layout, strict=True):
        top = im.height + 2 + y
        draw.rectangle([2 + x, top + 2, 2 + x + 8, top + 10], fill=tuple(int(v) for v in palette[cls]))
        draw.text((2 + x + 11, top), name, fill=(230, 230, 230))
    return canvas
