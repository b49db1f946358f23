"""Image files in and out: reading any common format as uint8 HWC, tensors for models, and back.

Images are read as they are displayed: a file's EXIF orientation (phone photos are often stored landscape with
Orientation 6) is applied on reading, as annotation tools (CVAT, Label Studio, labelme) show and label them, and
sizes read from headers are the displayed ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from visionkit.errors import DataError

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_GREY = ("L", "1", "LA", "F", *_SIXTEEN_BIT)  # modes read_image returns as one channel unless asked for three
# The most pixels one image may have (a PNG header can claim 40000x40000 in a few bytes); VISIONKIT_MAX_IMAGE_PIXELS
# raises it. PIL's own bomb check is set to the same bound, so a file is refused before it is decoded.
MAX_PIXELS = int(os.environ.get("VISIONKIT_MAX_IMAGE_PIXELS", 178_956_970))  # PIL's default error bound
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2  # PIL errors above twice this
ORIENTATION = 0x0112  # the EXIF tag
TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (1, upright, when it has none or an unreadable one)."""
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is an upright image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF orientation applied (the same image when it has none)."""
    return ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image file as HWC uint8: grey with channels=1, RGB with 3, as stored (grey or RGB) otherwise.

    16-bit and 32-bit integer images are scaled to 8 bits by their bit depth (not clipped).
    """
    try:
        with Image.open(path) as opened:
            check_pixels(opened, path)
            array = image_array(upright(opened), channels)
    except FileNotFoundError as exc:
        raise DataError(f"Image file '{path}' does not exist.") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(_too_many_pixels(path, str(exc))) from None
    except OSError as exc:
        raise DataError(f"Image file '{path}' could not be read as an image ({exc}).") from exc
    return array[:, :, None] if array.ndim == 2 else array


def image_array(im: Image.Image, channels: int | None = None) -> np.ndarray:
    """An opened (upright) image's pixels as read_image gives them: uint8, grey or RGB by `channels`."""
    if im.mode == "F":  # floating point: [0, 1] images are scaled, others read as 0-255
        wide = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(wide, initial=0) <= 1.0 else 1.0
        grey = np.round(np.nan_to_num(wide) * scale).clip(0, 255).astype(np.uint8)
        return grey if channels != 3 else np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in _SIXTEEN_BIT:
        wide = np.asarray(im).astype(np.float64)
        bits = 16 if im.mode.startswith("I;16") or wide.max(initial=0) <= 65535 else 32
        grey = np.round(wide * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
        return grey if channels != 3 else np.repeat(grey[:, :, None], 3, axis=2)
    grey = im.mode in ("L", "1", "LA")
    mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if grey else "RGB")
    return np.array(im.convert(mode))  # a writable copy (torch warns about read-only arrays)


def check_pixels(image: Image.Image, path: str | Path) -> None:
    """Refuse an image whose header claims more than MAX_PIXELS pixels (a DataError naming the file)."""
    if image.width * image.height > MAX_PIXELS:
        raise DataError(_too_many_pixels(path, f"its header says {image.width}x{image.height}"))


def _too_many_pixels(path: str | Path, what: str) -> str:
    return (
        f"Image file '{path}' is too large to read ({what}): more than {MAX_PIXELS:,} pixels, the bound that keeps a "
        "crafted header from filling the memory. Set VISIONKIT_MAX_IMAGE_PIXELS to read larger images."
    )


def image_header(path: str | Path, channels: int | None = None) -> tuple[int, int, int]:
    """(height, width, channels) that `read_image(path, channels)` would return, from the file header only."""
    try:
        with Image.open(path) as im:  # opening reads the header; pixels are decoded only on access
            check_pixels(im, path)
            width, height, mode = im.width, im.height, im.mode
            if exif_orientation(im) in TRANSPOSED:
                width, height = height, width
    except FileNotFoundError as exc:
        raise DataError(f"Image file '{path}' does not exist.") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(_too_many_pixels(path, str(exc))) from None
    except OSError as exc:
        raise DataError(f"Image file '{path}' could not be read as an image ({exc}).") from exc
    return height, width, channels if channels in (1, 3) else (1 if mode in _GREY else 3)


def stored_size(path: str | Path) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of an image as stored, before its orientation is applied."""
    with Image.open(path) as im:
        return im.width, im.height, exif_orientation(im)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An HWC uint8 image with three channels: grey repeated, an alpha channel dropped."""
    image = image[:, :, None] if image.ndim == 2 else image
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]


def to_tensor(
    image: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """HWC uint8 (or float in [0, 255]) -> CHW float tensor in [0, 1], normalised with mean/std when given."""
    if image.ndim == 2:
        image = image[:, :, None]
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    if mean is not None and std is not None:
        x = x.sub_(torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        x = x.div_(torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))
    return x


def to_uint8_image(
    tensor: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """Undo `to_tensor`: a CHW float tensor -> HWC uint8 (HxW for one channel)."""
    x = tensor.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(list(std)).view(-1, 1, 1) + torch.tensor(list(mean)).view(-1, 1, 1)
    array = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array[:, :, 0] if array.shape[2] == 1 else array


def save_image(image: np.ndarray | Image.Image, path: str | Path) -> None:
    """Write an HWC/HW uint8 array or a PIL image, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.squeeze(np.asarray(image)))
    picture.save(path)
