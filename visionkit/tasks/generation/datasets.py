"""Datasets for generation: built-in digits and image folders, as {"image": [-1, 1] tensor, "label": int}."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from visionkit.data.transforms import build_pipeline
from visionkit.errors import ConfigError, DataError
from visionkit.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")


def to_model_range(image: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC array -> float CxHxW tensor in [-1, 1]."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] tensor (N,C,H,W) -> uint8 array (N,H,W,C)."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and centre-crop to size x size (area filter when shrinking)."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    image = image.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: Path, channels: int, size: int | None = None) -> np.ndarray:
    """Read an image file as uint8 HxWxC with 1 or 3 channels, optionally resized to a square."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None:
                img = resize_square(img, size)
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"Image file '{path}' could not be read ({exc}). Remove it or replace it.") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"dataset split is {split!r}; accepted: {', '.join(SPLITS)}.")


def holdout_indices(n: int, split: str, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic train/val index split: a fixed permutation, the last `val_fraction` is val."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return np.sort(order)  # no hold-out: both splits see everything
    return np.sort(order[n - n_val:] if split == "val" else order[: n - n_val])


class ImageArrayDataset(Dataset):
    """Images held as uint8 arrays plus labels; applies the albumentations pipeline in `transform`."""

    def __init__(self, images: np.ndarray | list[np.ndarray], labels: Sequence[int], transforms: Any = None,
                 class_names: Sequence[str] | None = None) -> None:
        self.images = images
        self.labels = [int(x) for x in labels]
        self.transform = build_pipeline(transforms or [], key="data.transforms")
        self.class_names = list(class_names) if class_names else None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> np.ndarray:
        """The uint8 HxWxC image at `index`, before augmentation."""
        return self.images[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.transform(image=self.load(index))["image"]
        return {"image": to_model_range(image), "label": self.labels[index]}


@DATASETS.register("gen_digits", task="generation")
class GenerationDigits(ImageArrayDataset):
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), upscaled bilinearly to `image_size`."""

    def __init__(self, split: str = "train", image_size: int = 16, val_fraction: float = 0.2,
                 transforms: Any = None) -> None:
        from sklearn.datasets import load_digits

        _check_split(split)
        digits = load_digits()
        raw = torch.from_numpy(digits.images).float().div(16.0)[:, None]  # (N,1,8,8) in [0,1]
        if image_size != 8:
            raw = torch.nn.functional.interpolate(raw, size=(image_size, image_size), mode="bilinear",
                                                  align_corners=False)
        arr = (raw.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        idx = holdout_indices(len(arr), split, val_fraction)
        super().__init__(arr[idx], digits.target[idx], transforms, [str(i) for i in range(10)])


@DATASETS.register("gen_folder", task="generation", aliases=["gen_images"])
class GenerationImageFolder(ImageArrayDataset):
    """Images under `root` (recursively); class subfolders give labels. `root/<split>/` is used if present."""

    def __init__(self, root: str = "", split: str = "train", image_size: int = 32, channels: int = 3,
                 val_fraction: float = 0.1, labels: str = "auto", transforms: Any = None) -> None:
        _check_split(split)
        if labels not in ("auto", "folders", "none"):
            raise ConfigError(f"gen_folder: labels is {labels!r}; accepted: auto, folders, none.")
        base = Path(root).expanduser()
        if not root or not base.is_dir():
            raise DataError(f"gen_folder: root '{root}' is not a folder. Set data.{split}.root to a folder of images.")
        explicit = (base / split).is_dir()
        folder = base / split if explicit else base
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"gen_folder: no images ({', '.join(IMAGE_SUFFIXES)}) under '{folder}'.")
        subdirs = sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
        use_folders = labels == "folders" or (labels == "auto" and subdirs and all(
            len(p.relative_to(folder).parts) > 1 for p in files))
        if labels == "folders" and not subdirs:
            raise DataError(f"gen_folder: labels=folders but '{folder}' has no class subfolders.")
        names = subdirs if use_folders else None
        targets = [names.index(p.relative_to(folder).parts[0]) if names else -1 for p in files]
        if not explicit:
            idx = holdout_indices(len(files), split, val_fraction)
            files, targets = [files[i] for i in idx], [targets[i] for i in idx]
        self.files = files
        self.channels = channels
        self.image_size = image_size
        super().__init__([], targets, transforms, names)

    def load(self, index: int) -> np.ndarray:
        """Read and resize the image file at `index`."""
        return load_image(self.files[index], self.channels, self.image_size)
