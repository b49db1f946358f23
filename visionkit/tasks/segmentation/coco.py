"""COCO-JSON instance annotations rendered to semantic masks with pycocotools."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from visionkit.data import path_in_root
from visionkit.data.images import read_image
from visionkit.errors import DataError
from visionkit.registry import DATASETS
from visionkit.tasks.segmentation.datasets import IMAGENET_MEAN, IMAGENET_STD, SegmentationDataset


def decode_segmentation(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """Render one COCO `segmentation` (polygons, uncompressed or compressed RLE) to an HxW uint8 mask."""
    try:
        if isinstance(segmentation, list):
            if not segmentation:
                return np.zeros((height, width), dtype=np.uint8)
            polygons = [[float(v) for v in poly] for poly in segmentation]
            if any(len(poly) < 6 or len(poly) % 2 for poly in polygons):
                raise ValueError("each polygon needs an even number of coordinates, at least 3 points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            if isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = dict(segmentation)
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode("ascii")
            if list(rle["size"]) != [height, width]:
                raise ValueError(f"RLE size {list(rle['size'])} differs from the image size [{height}, {width}]")
        else:
            raise ValueError(f"expected a list of polygons or an RLE dict, got {type(segmentation).__name__}")
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice, not actionable here
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(np.uint8)
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{where}: the segmentation cannot be decoded: {exc}") from exc


@DATASETS.register("coco", task="segmentation")
class CocoSegmentationDataset(SegmentationDataset):
    """COCO instances JSON -> semantic masks: class 0 is background, categories follow in id order.

    Overlaps are resolved deterministically: instances are painted from largest to smallest area (ties by
    annotation id), so a smaller object in front of a larger one stays visible. Crowd regions are painted
    first as `ignore_index` (or as their category with `crowd: class`, or skipped with `crowd: skip`).
    """

    def __init__(
        self,
        annotations: str,
        images: str,
        categories: list[str] | None = None,
        crowd: str = "ignore",
        transforms: Any = None,
        num_classes: int = 2,
        ignore_index: int | None = 255,
        class_names: list[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        allow_outside_root: bool = False,
    ) -> None:
        self.annotation_file, self.image_root = Path(annotations).expanduser(), Path(images).expanduser()
        self.allow_outside_root = allow_outside_root
        if crowd not in ("ignore", "class", "skip"):
            raise DataError(f"The coco dataset's option crowd is {crowd!r}; accepted: ignore, class, skip.")
        if crowd == "ignore" and ignore_index is None:
            raise DataError(
                "The coco dataset's crowd='ignore' needs data.ignore_index; set it or use crowd: class|skip."
            )
        self.crowd = crowd
        coco = self._read_json()
        cats = sorted(coco.get("categories") or [], key=lambda c: c["id"])
        names_by_id = {c["id"]: str(c.get("name", c["id"])) for c in cats}
        if categories is None:
            chosen = [c["id"] for c in cats]
        else:
            by_name = {v: k for k, v in names_by_id.items()}
            unknown = [n for n in categories if n not in by_name]
            if unknown:
                raise DataError(
                    f"The coco dataset's categories {unknown} are not in '{self.annotation_file}'; "
                    f"its categories are: {', '.join(names_by_id.values())}."
                )
            chosen = [by_name[n] for n in categories]
        self.category_to_class = {cat_id: i + 1 for i, cat_id in enumerate(chosen)}
        found_names = ["background"] + [names_by_id[c] for c in chosen]
        if len(found_names) != num_classes:
            raise DataError(
                f"'{self.annotation_file}' gives {len(found_names)} classes (background + {len(chosen)} categories: "
                f"{', '.join(found_names[1:])}) but data.num_classes is {num_classes}. Set "
                f"data.num_classes={len(found_names)}, or choose categories with the dataset's `categories` option."
            )
        super().__init__(transforms, num_classes, ignore_index, class_names or found_names, mean, std)
        self._index(coco, names_by_id)

    def _read_json(self) -> dict[str, Any]:
        if not self.annotation_file.is_file():
            raise DataError(f"COCO annotation file '{self.annotation_file}' does not exist.")
        try:
            data = json.loads(self.annotation_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"COCO annotation file '{self.annotation_file}' is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"'{self.annotation_file}' is not a COCO instances file (no 'images' list).")
        return data

    def _index(self, coco: dict[str, Any], names_by_id: dict[int, str]) -> None:
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        if not self.images:
            raise DataError(f"'{self.annotation_file}' lists no images.")
        ids = {im["id"] for im in self.images}
        if len(ids) != len(self.images):
            twice = next(i for i in ids if sum(im["id"] == i for im in self.images) > 1)
            raise DataError(
                f"'{self.annotation_file}': image id {twice} is given twice in 'images': its annotations would land "
                "on one of them. Give every image its own id."
            )
        self.paths = {
            im["id"]: path_in_root(
                self.image_root, str(im["file_name"]), f"'{self.annotation_file}' image id {im['id']}",
                self.allow_outside_root, "data.<split>",
            )
            for im in self.images
        }  # fmt: skip
        self.annotations: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        for ann in coco.get("annotations") or []:
            if ann.get("image_id") not in ids:
                raise DataError(
                    f"'{self.annotation_file}': annotation {ann.get('id')} refers to unknown image "
                    f"id {ann.get('image_id')}."
                )
            if ann.get("category_id") not in names_by_id:
                raise DataError(
                    f"'{self.annotation_file}': annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')}, which is not in 'categories'."
                )
            if "segmentation" not in ann:
                raise DataError(f"'{self.annotation_file}': annotation {ann.get('id')} has no 'segmentation'.")
            self.annotations[ann["image_id"]].append(ann)
        missing = [str(self.paths[im["id"]]) for im in self.images if not self.paths[im["id"]].is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} image file(s) listed in '{self.annotation_file}' do not exist under "
                f"'{self.image_root}', e.g. {missing[:3]}."
            )

    def __len__(self) -> int:
        return len(self.images)

    def render_mask(self, index: int) -> np.ndarray:
        """Paint the semantic mask of image number `index` (see the class docstring for the order)."""
        info = self.images[index]
        height, width = int(info["height"]), int(info["width"])
        where = f"'{self.annotation_file}' image {info['id']} ('{info['file_name']}')"
        mask = np.zeros((height, width), dtype=np.int64)
        anns = self.annotations[info["id"]]
        crowds = [a for a in anns if a.get("iscrowd")] if self.crowd != "skip" else []
        things = [a for a in anns if not a.get("iscrowd") or self.crowd == "class"]
        things = [a for a in things if a["category_id"] in self.category_to_class]
        for ann in sorted(crowds, key=lambda a: a.get("id", 0)):
            if self.crowd == "ignore":
                mask[decode_segmentation(ann["segmentation"], height, width, where) > 0] = self.ignore_index
        decoded = [(a, decode_segmentation(a["segmentation"], height, width, where)) for a in things]
        decoded.sort(key=lambda item: (-int(item[1].sum()), item[0].get("id", 0)))
        for ann, binary in decoded:
            mask[binary > 0] = self.category_to_class[ann["category_id"]]
        return mask

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read the image and render its mask."""
        info = self.images[index]
        path = self.paths[info["id"]]
        image = read_image(path, 3)
        if image.shape[:2] != (int(info["height"]), int(info["width"])):
            raise DataError(
                f"Image '{path}' is {image.shape[1]}x{image.shape[0]} (WxH) but '{self.annotation_file}' says "
                f"{info['width']}x{info['height']}; the annotations would not line up."
            )
        return image, self.render_mask(index), f"Mask of '{path}'"
