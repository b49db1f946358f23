"""Generation datasets: folders of (optionally labelled) images, and a wrapper that repeats a dataset.

Every dataset of this task yields `(image, label)` with the image a float CxHxW tensor in [-1, 1] and
label -1 for unlabelled images. Classification datasets (`digits`, `image_folder`, `cifar10`, `mnist`,
`csv`) are used as they are: the task offers them mean=std=0.5, which maps [0, 255] to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from visionkit.data import IMAGE_SUFFIXES
from visionkit.data.facts import DataFacts, facts_of
from visionkit.data.images import read_image, to_tensor
from visionkit.data.transforms import build_pipeline
from visionkit.errors import ConfigError, DataError
from visionkit.registry import DATASETS

SPLITS = ("train", "val")


HALF = [0.5]  # mean = std = 0.5 maps [0, 1] to [-1, 1], the range of every generation model


def to_model_range(image: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC array -> float CxHxW tensor in [-1, 1]."""
    return to_tensor(image, HALF, HALF)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop to size x size (box filter when shrinking)."""
    h, w = image.shape[:2]
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        resized = np.asarray(
            Image.fromarray(np.squeeze(image, 2) if image.shape[2] == 1 else image).resize((nw, nh), resample)
        )
        image = resized[:, :, None] if resized.ndim == 2 else resized
    left, top = (nw - size) // 2, (nh - size) // 2
    return image[top : top + size, left : left + size]


def load_image(path: Path, channels: int | None, size: int | None = None) -> np.ndarray:
    """Read an image as uint8 HxWxC (1 channel, 3, or as stored when None), optionally resized square."""
    image = read_image(path, channels)
    return resize_square(image, size) if size is not None else image


def holdout_indices(n: int, split: str, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic train/val split: a fixed permutation whose last `val_fraction` is val (0: both all)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return np.arange(n)
    return np.sort(order[n - n_val :] if split == "val" else order[: n - n_val])


@DATASETS.register("gen_folder", task="generation")
class GenerationImageFolder(Dataset):
    """Images under `root`, searched recursively; `root/<split>/` is used when it exists, else a
    deterministic `val_fraction` hold-out. Class subfolders give labels (`labels: auto|folders|none`)."""

    def __init__(
        self,
        root: str,
        split: str = "train",
        image_size: int = 32,
        channels: int | None = None,
        val_fraction: float = 0.1,
        labels: str = "auto",
        transforms: list | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"gen_folder: split is {split!r}; accepted: {', '.join(SPLITS)}.")
        if labels not in ("auto", "folders", "none"):
            raise ConfigError(f"data.{split}.labels is {labels!r}; accepted: auto, folders, none.")
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"data.{split}.root '{root}' is not a folder; point it at a folder of images.")
        explicit = (base / split).is_dir()
        folder = base / split if explicit else base
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found under '{folder}'.")
        parts = [p.relative_to(folder).parts for p in files]
        nested = all(len(p) > 1 for p in parts)
        if labels == "folders" and not nested:
            raise DataError(f"data.{split}.labels=folders but some images in '{folder}' are not in a class subfolder.")
        self.classes = sorted({p[0] for p in parts}) if labels != "none" and nested else []
        targets = [self.classes.index(p[0]) if self.classes else -1 for p in parts]
        if not explicit:
            keep = holdout_indices(len(files), split, val_fraction)
            files, targets = [files[i] for i in keep], [targets[i] for i in keep]
        if not files:
            raise DataError(f"The {split} split of '{folder}' is empty; lower data.{split}.val_fraction.")
        self.files, self.labels = files, targets
        self.image_size = image_size
        self.channels = channels or load_image(files[0], None).shape[2]
        self.transform = build_pipeline(transforms or [], key=f"data.{split}_transforms")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.files[index], self.channels, self.image_size)
        image = self.transform(image=image)["image"]
        return to_model_range(image), self.labels[index]


class RepeatedDataset(Dataset):
    """A dataset seen `times` times per epoch (fewer, longer epochs for small data like digits)."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        self.dataset, self.times = dataset, times
        self.transform = getattr(dataset, "transform", None)  # the trainer reseeds this per batch

    def facts(self) -> DataFacts:
        """The repeated dataset's facts."""
        return facts_of(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset) * self.times  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % len(self.dataset)]  # type: ignore[arg-type]
