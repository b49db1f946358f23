"""Detection prediction helpers: COCO ids from an annotation file and the task-wide result files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torchvision.ops import batched_nms, nms

from visionkit.errors import ConfigError, DataError
from visionkit.tasks.detection.coco import read_coco_json

OPTIONS = {
    "score_threshold": 0.3,
    "ann_file": None,
    "draw": True,
    "iou": None,  # a further NMS at this IoU (the model's own NMS has run at its nms_thresh)
    "agnostic_nms": False,  # that NMS across classes: one box per object whatever its label
    "max_det": None,  # keep the best max_det detections per image
    "classes": None,  # keep only these classes (names or indices)
    "min_side": 512,  # drawings are scaled up so their shorter side is at least this (0: the image's own size)
}
AGNOSTIC_IOU = 0.5  # the IoU of agnostic_nms when no `iou` is given


class AnnotationIds:
    """Image and category ids from a COCO annotation file: images by path, categories by class name."""

    def __init__(self, ann_file: str, class_names: Sequence[str]) -> None:
        self.ann_file = ann_file
        data = read_coco_json(ann_file, "predict option ann_file")
        by_name: dict[str, list[int]] = {}
        for c in data["categories"]:
            by_name.setdefault(str(c.get("name", c["id"])), []).append(int(c["id"]))
        names = list(class_names)
        if sorted(by_name) != sorted(names) or any(len(ids) > 1 for ids in by_name.values()):
            listed = [str(c.get("name", c["id"])) for c in sorted(data["categories"], key=lambda c: int(c["id"]))]
            raise DataError(
                f"ann_file '{ann_file}' has categories {listed} but the model predicts the classes {names}; "
                "categories are matched by name, so the two lists must hold the same names."
            )
        self.category_ids = [by_name[n][0] for n in names]  # label i -> the file's id of class name i
        self.suffixes: dict[tuple[str, ...], list[int]] = {}
        for im in data["images"]:
            parts = tuple(p for p in PurePosixPath(str(im["file_name"]).replace("\\", "/")).parts if p not in ("", "."))
            for k in range(1, len(parts) + 1):
                self.suffixes.setdefault(parts[-k:], []).append(int(im["id"]))

    def image_ids(self, inputs: Sequence[str]) -> list[int]:
        """The id of each input: the annotation image whose file_name is the longest tail of its path."""
        ids, owner = [], {}
        for raw in inputs:
            parts = Path(os.path.abspath(raw)).parts
            found: list[int] = []
            for k in range(len(parts), 0, -1):
                found = sorted(set(self.suffixes.get(tuple(parts[-k:]), [])))
                if found:
                    break
            if not found:
                raise DataError(f"ann_file '{self.ann_file}' has no image matching '{raw}' (by path or file name).")
            if len(found) > 1:
                raise DataError(
                    f"ann_file '{self.ann_file}': input '{raw}' matches {len(found)} images ({found[:5]}) by its "
                    "file name; give the images' folder so their paths match the file_name entries."
                )
            if found[0] in owner:
                raise DataError(
                    f"ann_file '{self.ann_file}': inputs '{owner[found[0]]}' and '{raw}' both match image id "
                    f"{found[0]}; predict them separately or use paths that match the file_name entries."
                )
            owner[found[0]] = raw
            ids.append(found[0])
        return ids


def write_results(
    records: Sequence[dict[str, Any]],
    detections: Sequence[list[tuple[int, float, list[float]]]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    out_dir: Path,
) -> dict[str, Any]:
    """results.json (every detection, COCO results) and images.json (images and categories); return a summary."""
    results, images = [], []
    for record, found, image_id in zip(records, detections, image_ids, strict=True):
        images.append(
            {"id": image_id, "file_name": record["input"], "width": record["width"], "height": record["height"]}
        )
        results += [  # an instance model's detections carry a 4th item: the mask as COCO RLE
            {"image_id": image_id, "category_id": int(category_ids[d[0]]), "bbox": d[2], "score": d[1]}
            | ({"segmentation": d[3]} if len(d) > 3 else {})
            for d in found
        ]
    (out_dir / "results.json").write_text(json.dumps(results))
    categories = [{"id": int(c), "name": n} for c, n in zip(category_ids, class_names, strict=True)]
    (out_dir / "images.json").write_text(json.dumps({"images": images, "categories": categories}, indent=1))
    return {
        "results_file": str(out_dir / "results.json"),
        "images_file": str(out_dir / "images.json"),
        "num_images": len(images),
        "num_detections": len(results),
        "image_ids": {r["input"]: i for r, i in zip(records, image_ids, strict=True)},
    }


def class_filter(classes: Any, names: Sequence[str]) -> torch.Tensor | None:
    """The `classes` option as label indices: a name, an index or a list of them; a ConfigError for others."""
    if classes is None:
        return None
    given = classes if isinstance(classes, (list, tuple)) else [classes]
    labels = []
    for c in given:
        if isinstance(c, str) and c in names:
            labels.append(list(names).index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            labels.append(c)
        else:
            raise ConfigError(
                f"Predict option 'classes' has {c!r}, which is not one of the model's classes: give names from "
                f"{list(names)} or indices 0..{len(names) - 1}, e.g. --option classes=[{names[0]}]."
            )
    return torch.tensor(labels, dtype=torch.long)


def filter_detections(
    outputs: list[dict[str, torch.Tensor]], options: dict[str, Any], names: Sequence[str]
) -> list[dict[str, torch.Tensor]]:
    """Apply the predict options `classes`, `iou` / `agnostic_nms` and `max_det` to each image's detections
    (every key of an output, masks included, is kept in step)."""
    iou, agnostic, max_det = options.get("iou"), bool(options.get("agnostic_nms")), options.get("max_det")
    if iou is not None and (isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1):
        raise ConfigError(f"Predict option 'iou' is {iou!r}; give an IoU in (0, 1], e.g. iou=0.5.")
    if max_det is not None and (isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1):
        raise ConfigError(f"Predict option 'max_det' is {max_det!r}; give a positive integer, e.g. max_det=100.")
    wanted = class_filter(options.get("classes"), names)
    if wanted is None and iou is None and not agnostic and max_det is None:
        return outputs
    filtered = []
    for out in outputs:
        boxes, scores, labels = out["boxes"].float(), out["scores"].float(), out["labels"].long()
        keep = torch.arange(len(scores), device=scores.device)
        if wanted is not None:
            keep = keep[torch.isin(labels, wanted.to(labels.device))]
        if agnostic:
            keep = keep[nms(boxes[keep], scores[keep], float(iou if iou is not None else AGNOSTIC_IOU))]
        elif iou is not None:
            keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], float(iou))]
        keep = keep[scores[keep].argsort(descending=True, stable=True)]
        if max_det is not None:
            keep = keep[:max_det]
        filtered.append({k: v[keep] if torch.is_tensor(v) and len(v) == len(scores) else v for k, v in out.items()})
    return filtered
