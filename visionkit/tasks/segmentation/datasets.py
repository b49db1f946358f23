"""Segmentation datasets: the shared sample pipeline and the image/mask folder format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from visionkit.data import IMAGE_SUFFIXES, skip_hidden
from visionkit.data.images import check_pixels, read_image, to_tensor, upright
from visionkit.errors import DataError
from visionkit.registry import DATASETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int | None, where: str) -> None:
    """Raise a DataError when a mask holds a value that is neither a class index nor ignore_index."""
    values = np.unique(mask)
    bad = [int(v) for v in values if (v < 0 or v >= num_classes) and v != ignore_index]
    if bad:
        raise DataError(
            f"{where} holds class index value(s) {bad[:10]} outside 0..{num_classes - 1} "
            f"(data.num_classes={num_classes}, data.ignore_index={ignore_index}). Fix the mask, raise "
            "data.num_classes, or set data.ignore_index to the value used for 'ignore'."
        )


class SegmentationDataset(Dataset):
    """Base for segmentation datasets: subclasses load (image, mask); this applies transforms and checks.

    A sample is `{"image": 3xHxW float tensor, "mask": HxW int64 tensor, "index": int}`. The albumentations
    pipeline is stored as `self.transform` so the trainer can reseed it. Images are read as RGB.
    """

    channels = 3

    def __init__(
        self,
        transforms: Any = None,
        num_classes: int = 2,
        ignore_index: int | None = 255,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.transform = transforms
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.mean, self.std = tuple(mean), tuple(std)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Return (HxWx3 uint8 image, HxW integer mask, a name for error messages) for one sample."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, where = self.load(index)
        if image.shape[:2] != mask.shape[:2]:
            raise DataError(
                f"{where}: the mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is "
                f"{image.shape[1]}x{image.shape[0]}; image and mask must have the same size."
            )
        check_mask_values(mask, self.num_classes, self.ignore_index, where)
        mask = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.int32)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": to_tensor(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "index": index,
        }


def read_mask(
    path: Path,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_color: Sequence[int] | None = None,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Read a mask PNG of class indices (mode L/P/I) or an RGB colour mask mapped through `palette`."""
    try:
        with Image.open(path) as opened:
            check_pixels(opened, path)
            img = upright(opened)  # displayed as its image is (EXIF orientation applied)
            mode = img.mode
            if mode in ("LA", "PA", "La"):
                raise DataError(
                    f"Mask '{path}' is a {mode} image (one channel of classes plus transparency); store class indices "
                    "as a single-channel or palette PNG (mode L or P) without an alpha channel."
                )
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
            else:
                return np.asarray(img).astype(np.int64)
    except FileNotFoundError as exc:
        raise DataError(f"Mask file '{path}' does not exist.") from exc
    except OSError as exc:
        raise DataError(f"Mask file '{path}' could not be read as an image: {exc}") from exc
    if palette is None:
        raise DataError(
            f"Mask '{path}' is an {mode} colour image. Store class indices as a single-channel or palette "
            "PNG (mode L or P), or give the dataset a `palette: [[r, g, b], ...]` with one colour per class."
        )
    codes = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
    mask = np.full(codes.shape, -1, dtype=np.int64)
    for index, color in enumerate(palette):
        r, g, b = (int(c) for c in color)
        mask[codes == (r << 16 | g << 8 | b)] = index
    if ignore_color is not None and ignore_index is not None:
        r, g, b = (int(c) for c in ignore_color)
        mask[codes == (r << 16 | g << 8 | b)] = ignore_index
    if (mask < 0).any():
        unknown = np.unique(codes[mask < 0])[:5]
        colors = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in unknown]
        raise DataError(
            f"Mask '{path}' has colour(s) {colors} that are not in the dataset's palette "
            f"({len(palette)} colours) nor its ignore_color {ignore_color}. Add them to `palette` or `ignore_color`."
        )
    return mask


@DATASETS.register("seg_folder", task="segmentation", aliases=["mask_folder"])
class FolderSegmentationDataset(SegmentationDataset):
    """Image/mask folder pairs: `root/<image_dir>/NAME.ext` with `root/<mask_dir>/NAME<mask_suffix>`."""

    def __init__(
        self,
        root: str,
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_suffix: str = ".png",
        palette: list[list[int]] | None = None,
        ignore_color: list[int] | None = None,
        transforms: Any = None,
        num_classes: int = 2,
        ignore_index: int | None = 255,
        class_names: list[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(transforms, num_classes, ignore_index, class_names, mean, std)
        self.root = Path(root).expanduser()
        self.image_dir, self.mask_dir = self.root / image_dir, self.root / mask_dir
        if palette is not None and len(palette) != num_classes:
            raise DataError(
                f"The dataset's palette has {len(palette)} colours but data.num_classes is {num_classes}; "
                "give one [r, g, b] colour per class, in class-index order."
            )
        self.palette, self.ignore_color = palette, ignore_color
        for folder, what in ((self.image_dir, "image_dir"), (self.mask_dir, "mask_dir")):
            if not folder.is_dir():
                raise DataError(
                    f"Segmentation folder dataset: {what} '{folder}' does not exist. Expected the layout "
                    f"root/{image_dir}/NAME.jpg|png with root/{mask_dir}/NAME{mask_suffix} (root='{self.root}')."
                )
        listed = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.images = skip_hidden(listed, self.image_dir, "Segmentation folder dataset")
        if not self.images:
            raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in '{self.image_dir}'.")
        self.masks = [self.mask_dir / (p.stem + mask_suffix) for p in self.images]
        missing = [m for m in self.masks if not m.is_file()]
        if missing:
            listed = ", ".join(f"'{m}'" for m in missing[:5])
            raise DataError(
                f"{len(missing)} of {len(self.images)} images in '{self.image_dir}' have no mask file; "
                f"missing: {listed}{' ...' if len(missing) > 5 else ''}. Each image NAME.ext needs "
                f"'{self.mask_dir}/NAME{mask_suffix}'."
            )

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read image and mask number `index` from disk."""
        mask_path = self.masks[index]
        image = read_image(self.images[index], 3)
        mask = read_mask(mask_path, self.palette, self.ignore_color, self.ignore_index)
        return image, mask, f"Mask '{mask_path}' (image '{self.images[index]}')"
