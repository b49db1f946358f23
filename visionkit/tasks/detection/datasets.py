"""The dataset every detection format loads into: image records, box checks, augmentation and COCO ground truth."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from visionkit.data import DataWarning
from visionkit.data.images import image_header, read_image, stored_size
from visionkit.data.transforms import build_pipeline
from visionkit.errors import ConfigError, DataError

INVALID_BOX_POLICIES = ("clip", "error")


@dataclass
class ImageRecord:
    """One image and its boxes (xyxy pixels); `ignore_boxes` are crowd/difficult regions used only in eval."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    segments: list[Any] = field(default_factory=list)  # COCO segmentation of each box, for instance masks


class BoxChecker:
    """Checks boxes against their image: clips (and counts) or raises, per the `invalid_boxes` policy."""

    def __init__(self, policy: str, source: str) -> None:
        if policy not in INVALID_BOX_POLICIES:
            raise ConfigError(f"invalid_boxes is {policy!r}; accepted: {', '.join(INVALID_BOX_POLICIES)}.")
        self.policy = policy
        self.source = source
        self.clipped: list[str] = []
        self.dropped: list[str] = []

    def check(self, box: Sequence[float], width: int, height: int, where: str) -> list[float] | None:
        """Return the box (clipped to the image) or None when it has no area left; raise under 'error'."""
        x1, y1, x2, y2 = (float(v) for v in box)
        if not all(np.isfinite([x1, y1, x2, y2])):
            raise DataError(f"{self.source}: {where} has a non-finite box {list(box)}.")
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        outside = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
        empty = cx2 - cx1 <= 0 or cy2 - cy1 <= 0
        if (outside or empty) and self.policy == "error":
            problem = "has zero area" if x2 - x1 <= 0 or y2 - y1 <= 0 else f"lies outside the {width}x{height} image"
            raise DataError(
                f"{self.source}: {where} box {[x1, y1, x2, y2]} (x1, y1, x2, y2) {problem}. Fix the annotation, "
                "or set invalid_boxes: clip on the dataset to clip boxes to the image and drop empty ones."
            )
        if empty:
            self.dropped.append(f"{where} {[round(v, 2) for v in (x1, y1, x2, y2)]}")
            return None
        if outside:
            self.clipped.append(where)
        return [cx1, cy1, cx2, cy2]

    def report(self) -> None:
        """Warn once with the counts of clipped and dropped boxes (nothing is lost silently)."""
        if self.clipped or self.dropped:
            warnings.warn(
                f"{self.source}: {len(self.clipped)} box(es) clipped to the image, {len(self.dropped)} box(es) "
                f"with no area inside the image dropped (first dropped: {self.dropped[:3]}; first clipped: "
                f"{self.clipped[:3]}). Set invalid_boxes: error to stop on such boxes instead.",
                DataWarning,  # visionkit's own category: the command line prints it as `warning: ...`
                stacklevel=3,
            )


def check_files_exist(records: Sequence[ImageRecord], source: str) -> None:
    """Raise a DataError listing missing image files."""
    missing = [str(r.path) for r in records if not r.path.is_file()]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} of {len(records)} image file(s) are missing, e.g. {missing[:3]}. "
            "Check the image folder setting and that the files were copied completely."
        )


def image_size_of(path: Path, source: str) -> tuple[int, int]:
    """(width, height) from the image header, as displayed (its EXIF orientation applied)."""
    try:
        height, width, _ = image_header(path)
    except DataError as exc:
        what = "is missing" if "does not exist" in str(exc) else f"cannot be read: {exc}"
        raise DataError(f"{source}: image file '{path}' {what}") from None
    return width, height


def quiet_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO object from an in-memory dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def bbox_params(min_visibility: float) -> A.BboxParams:
    """Albumentations box handling: xyxy pixels, clipped, dropped below `min_visibility` of their area."""
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, clip=True)


class DetectionDataset(Dataset):
    """Images with boxes from any format; returns (image float[3,H,W] in 0..1, target dict)."""

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: list[str],
        category_ids: list[int],
        transforms: Sequence[Any] | A.Compose | None = None,
        min_visibility: float = 0.0,
        source: str = "dataset",
        split: str = "train",
        coco: COCO | None = None,
    ) -> None:
        if not 0.0 <= min_visibility <= 1.0:
            raise ConfigError(f"{source}: min_visibility is {min_visibility!r}; give a fraction in [0, 1].")
        self.records = records
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)  # contiguous label i <-> category_ids[i]
        self.source = source
        self.split = split
        if isinstance(transforms, A.Compose):
            self.transform = transforms
        else:
            with warnings.catch_warnings():  # an empty pipeline warns that no transform uses the boxes
                warnings.simplefilter("ignore", UserWarning)
                self.transform = build_pipeline(
                    transforms, key=f"data.{split}_transforms", bbox_params=bbox_params(min_visibility)
                )
        self._coco = coco
        self._cache: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def cache_images(self, limit_bytes: int) -> bool:
        """Keep decoded images in memory after their first read (each loader worker keeps its own copy), when
        they fit in `limit_bytes` (their annotated sizes); False, with a note, when they do not."""
        needed = sum(r.width * r.height * 3 for r in self.records)
        if needed > limit_bytes:
            warnings.warn(
                f"{self.source}: data.cache_images skipped: the {len(self.records)} images need "
                f"{needed / 2**30:.1f} GiB decoded, more than VISIONKIT_IMAGE_CACHE_GB={limit_bytes / 2**30:g}.",
                DataWarning,
                stacklevel=2,
            )
            return False
        self._cache = {}
        return True

    def load_image(self, index: int) -> np.ndarray:
        """The image as an RGB uint8 array (checked against the annotated size; from memory when cached)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index].copy()  # transforms may write into their input
        image = self._read_image(index)
        if self._cache is not None:
            self._cache[index] = image.copy()
        return image

    def _read_image(self, index: int) -> np.ndarray:
        rec = self.records[index]
        try:
            image = read_image(rec.path, 3)  # 16-bit files are scaled, as at predict time
        except DataError as exc:
            raise DataError(f"{self.source}: {exc}") from exc
        if image.shape[:2] != (rec.height, rec.width):
            width, height, orientation = stored_size(rec.path)
            exif = (
                f" The file is stored as {width}x{height} with EXIF orientation {orientation}, which visionkit applies "
                "(as annotation tools display it): these annotations were made on the stored, unrotated image. "
                "Re-export them from a tool that applies EXIF, or save the image without its orientation tag."
                if orientation != 1 and (width, height) == (rec.width, rec.height)
                else ""
            )
            raise DataError(
                f"{self.source}: image '{rec.path}' is {image.shape[1]}x{image.shape[0]} but its annotation says "
                f"{rec.width}x{rec.height}; boxes would be misplaced. Fix width/height in the annotations.{exif}"
            )
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.records[index]
        return self.augment(self.load_image(index), rec.boxes, rec.labels, None, rec.image_id, (rec.height, rec.width))

    def augment(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None,
        image_id: int,
        orig_size: tuple[int, int],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The transform list on one image and its boxes (mosaic calls this on its composites), as a sample."""
        return self.to_sample(self.transform(image=image, bboxes=boxes, labels=labels), image_id, orig_size)

    @staticmethod
    def to_sample(
        out: dict[str, Any], image_id: int, orig_size: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A transform's output as (image float[3,H,W] in 0..1, target); sub-pixel boxes dropped."""
        image = out["image"]
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        image = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
        boxes = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
        labels = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)  # sub-pixel boxes are noise
        target = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": torch.tensor(image_id),
            "orig_size": torch.tensor(list(orig_size)),
        }
        return image, target

    # -- evaluation -------------------------------------------------------------------------------
    @property
    def coco(self) -> COCO:
        """Ground truth as a pycocotools COCO object (the file itself for COCO; built for other formats)."""
        if self._coco is None:
            self._coco = quiet_coco(self.coco_dict())
        return self._coco

    def coco_dict(self) -> dict[str, Any]:
        """The records as a COCO annotation dict (ignored regions become iscrowd=1)."""
        images, annotations = [], []
        for rec in self.records:
            images.append({"id": rec.image_id, "file_name": str(rec.path), "width": rec.width, "height": rec.height})
            for crowd, boxes, labels in ((0, rec.boxes, rec.labels), (1, rec.ignore_boxes, rec.ignore_labels)):
                for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
                    w, h = box[2] - box[0], box[3] - box[1]
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": rec.image_id,
                            "bbox": [box[0], box[1], w, h],
                            "area": w * h,
                            "iscrowd": crowd,
                            "category_id": self.category_ids[label],
                        }
                    )
        categories = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)]
        return {"images": images, "annotations": annotations, "categories": categories}


def require_annotations(records: Sequence[ImageRecord], source: str) -> None:
    """Raise when no image has any box (nothing to learn or evaluate)."""
    if not records:
        raise DataError(f"{source}: no images found. Check the paths in the dataset config.")
    if not any(len(r.boxes) or len(r.ignore_boxes) for r in records):
        raise DataError(
            f"{source}: none of the {len(records)} images has an annotation (the annotation list is empty). "
            "Images without boxes are fine as negatives, but a split needs at least one box."
        )
    if not any(len(r.boxes) for r in records):
        crowds = sum(len(r.ignore_boxes) for r in records)
        raise DataError(
            f"{source}: all {crowds} annotation(s) are ignored regions (COCO iscrowd=1, or VOC difficult), which "
            "are neither trained on nor scored: training would learn nothing and mAP would read -1. A split needs "
            "at least one ordinary box (for VOC, use_difficult: true counts difficult objects)."
        )
