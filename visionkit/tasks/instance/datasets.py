"""Instance data: detection records whose boxes each carry a mask (COCO polygons or RLE), and shapes-instance.

`InstanceDataset` is a DetectionDataset, so every detection service (mosaic, the box checks, COCO ground truth)
works on it; its samples add `masks` (uint8 [N, H, W], one per box, aligned through every transform).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionkit.errors import ConfigError, DataError
from visionkit.registry import DATASETS
from visionkit.tasks.detection.coco import load_coco
from visionkit.tasks.detection.datasets import DetectionDataset, ImageRecord
from visionkit.tasks.detection.shapes import generate, shapes_params, shapes_root
from visionkit.tasks.detection.yolo import yolo_records
from visionkit.tasks.instance.masks import box_of, check_segmentation, decode, encode


class InstanceDataset(DetectionDataset):
    """Images with boxes and per-instance masks; returns (image float[3,H,W] in 0..1, target with `masks`)."""

    def load_masks(self, index: int) -> np.ndarray:
        """The masks of the record's boxes, uint8 0/1 [N, height, width], in box order."""
        rec = self.records[index]
        if not len(rec.boxes):
            return np.zeros((0, rec.height, rec.width), np.uint8)
        return np.stack([decode(segment, rec.height, rec.width) for segment in rec.segments])

    def coco_dict(self) -> dict[str, Any]:
        """Detection's COCO dict with each trained object's `segmentation` (for formats that are not COCO)."""
        data = super().coco_dict()
        ordinary = iter(a for a in data["annotations"] if not a["iscrowd"])
        for rec in self.records:
            for segment in rec.segments:
                next(ordinary)["segmentation"] = segment
        return data

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.records[index]
        image = self.load_image(index)
        return self.augment(image, rec.boxes, rec.labels, self.load_masks(index), rec.image_id, (rec.height, rec.width))

    def augment(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None,
        image_id: int,
        orig_size: tuple[int, int],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The transform list on the image, its boxes and their masks together; a box dropped drops its mask,
        and each box becomes the one around its mask's pixels (a mask emptied by a crop drops its object)."""
        masks = np.zeros((0, *image.shape[:2]), np.uint8) if masks is None else masks
        order = np.arange(len(boxes))  # carried as the box label, so the surviving masks can be picked
        extra = {"masks": list(masks)} if len(masks) else {}
        out = self.transform(image=image, bboxes=boxes, labels=order, **extra)
        kept = np.asarray(out["labels"], np.int64).reshape(-1)
        sample_image, target = self.to_sample(
            {"image": out["image"], "bboxes": out["bboxes"], "labels": kept}, image_id, orig_size
        )
        height, width = sample_image.shape[-2:]
        chosen = [int(i) for i in target["labels"]]  # sub-pixel boxes were dropped by to_sample
        moved = [np.asarray(out["masks"][i], np.uint8) for i in chosen]
        boxes_of = [box_of(mask) for mask in moved]  # the mask is the object: a crop or turn moves its box
        keep = [k for k, box in enumerate(boxes_of) if box is not None]
        target["boxes"] = torch.tensor([boxes_of[k] for k in keep], dtype=torch.float32).reshape(-1, 4)
        target["masks"] = (
            torch.from_numpy(np.stack([moved[k] for k in keep]))
            if keep
            else torch.zeros((0, height, width), dtype=torch.uint8)
        )
        target["labels"] = torch.as_tensor(np.asarray(labels, np.int64)[[chosen[k] for k in keep]]).reshape(-1)
        return sample_image, target


@DATASETS.register("coco", task="instance")
def coco_instances(
    ann_file: str,
    image_dir: str,
    split: str = "train",
    transforms: Sequence[Any] | None = None,
    min_visibility: float = 0.3,
    invalid_boxes: str = "clip",
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> InstanceDataset:
    """COCO instances JSON with a `segmentation` per annotation (polygons, multi-part, RLE); crowds ignored."""
    return load_coco(
        ann_file, image_dir, split, transforms, min_visibility, invalid_boxes, check_files, allow_outside_root,
        kind=InstanceDataset, check=check_masks,
    )  # fmt: skip


def check_masks(data: dict[str, Any], records: list[ImageRecord], source: str) -> None:
    """Every annotation kept (and every crowd) needs a valid mask of its image's size; a DataError names it."""
    sizes = {rec.image_id: (rec.width, rec.height, rec.path.name) for rec in records}
    for ann in data["annotations"]:
        width, height, name = sizes[ann["image_id"]]
        where = f"{source}: annotation id {ann.get('id')} in '{name}'"
        if ann.get("segmentation") is None:
            raise DataError(
                f"{where} has no 'segmentation'. Instance segmentation needs a mask per object (polygons or RLE); "
                "a file of boxes only is for the detection task."
            )
        check_segmentation(ann["segmentation"], width, height, where)


def mask_annotation(box: list[float], cls: int, mask: np.ndarray | None) -> dict[str, Any] | None:
    """A shape's COCO fields from its visible mask: RLE, pixel area, the mask's box; None when fully hidden."""
    found = box_of(mask) if mask is not None else None
    if found is None:
        return None
    x1, y1, x2, y2 = found
    bbox = [x1, y1, x2 - x1, y2 - y1]
    return {"category_id": cls + 1, "bbox": bbox, "area": int(mask.sum()), "iscrowd": 0, "segmentation": encode(mask)}


def generate_instances(root: Path, params: dict[str, Any]) -> None:
    """The shapes data with the exact visible mask of every drawn shape (RLE), boxes around the masks."""
    generate(root, params, mask_annotation, masks=True)


@DATASETS.register("yolo", task="instance")
def yolo_instances(
    data_yaml: str,
    split: str = "train",
    transforms: Sequence[Any] | None = None,
    min_visibility: float = 0.3,
    invalid_boxes: str = "clip",
) -> InstanceDataset:
    """Ultralytics-style segment labels: one `class x1 y1 x2 y2 ...` polygon line (normalised) per object."""
    records, names, source = yolo_records(data_yaml, split, invalid_boxes, with_segments=True)
    return InstanceDataset(records, names, list(range(1, len(names) + 1)), transforms, min_visibility, source, split)


@DATASETS.register("shapes_instance", task="instance", aliases=["shapes"])
def shapes_instances(
    split: str = "train",
    transforms: Sequence[Any] | None = None,
    min_visibility: float = 0.3,
    image_size: int = 128,
    num_classes: int = 4,
    num_train: int = 2000,
    num_val: int = 200,
    min_objects: int = 1,
    max_objects: int = 5,
    min_size: float = 12.0,
    max_size: float = 56.0,
    max_overlap: float = 0.3,
    clutter: int = 6,
    noise: float = 6.0,
    seed: int = 0,
) -> InstanceDataset:
    """The shapes images with each shape's visible mask (later shapes occlude earlier ones), as COCO RLE."""
    if split not in ("train", "val"):
        raise ConfigError(f"shapes split is {split!r}; accepted: train, val.")
    params = shapes_params(
        image_size, num_classes, num_train, num_val, min_objects, max_objects, min_size, max_size, max_overlap,
        clutter, noise, seed,
    )  # fmt: skip
    root = shapes_root(params, generate_instances, "shapes-instance")
    return coco_instances(
        str(root / f"annotations_{split}.json"),
        str(root / split),
        split=split,
        transforms=transforms,
        min_visibility=min_visibility,
    )
