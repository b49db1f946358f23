"""COCO box and mask AP (pycocotools `bbox` and `segm`) over every rank's detections and their RLE masks."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pycocotools.coco import COCO

from visionkit.engine.contracts import Metric
from visionkit.registry import METRICS
from visionkit.tasks.detection.evaluation import STAT_NAMES, coco_evaluate
from visionkit.tasks.detection.metrics import ROW, _cat, rows_to_results
from visionkit.tasks.detection.report import class_table, pr_curves


def instance_results(
    rows: torch.Tensor, rles: Sequence[str], sizes: Mapping[int, tuple[int, int]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(box results, mask results) of the same detections: the second carry `segmentation` RLEs and no box,
    so pycocotools takes their area and box from the mask, as COCO's segm evaluation does."""
    boxes = rows_to_results(rows)
    masks = []
    for box, rle in zip(boxes, rles, strict=True):
        height, width = sizes[box["image_id"]]
        segmentation = {"size": [height, width], "counts": rle}
        masks.append({k: v for k, v in box.items() if k != "bbox"} | {"segmentation": segmentation})
    return boxes, masks


@METRICS.register("coco_instance_map", task="instance")
class CocoInstanceMAP(Metric):
    """COCO box and mask evaluation: `mask_*` and `box_*` versions of the 12 stats, per-class mask and box AP.

    `update` takes a validation step's `image_ids`, `detections` (one [N, 7] float64 row tensor per image, as
    for detection) and `masks` (per image, its detections' compressed RLE counts as text, in row order). RLE
    text travels between ranks as float64 byte codes with one length per detection; images repeated by a
    distributed sampler are counted once.
    """

    inputs = ("image_ids", "detections", "masks")

    def __init__(self, ground_truth: COCO | Callable[[], COCO]) -> None:
        super().__init__()
        self.ground_truth = ground_truth
        for name in ("image_ids", "counts", "detections", "rle_lengths", "rle_bytes"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    def update(self, outputs: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Add one batch of images: their ids, detection rows and RLE texts."""
        rows, masks = outputs["detections"], outputs["masks"]
        ids = torch.as_tensor(outputs["image_ids"], dtype=torch.float64, device=self.device).reshape(-1)
        if not len(rows) == len(masks) == len(ids) or any(len(r) != len(m) for r, m in zip(rows, masks)):
            raise ValueError("coco_instance_map: one row tensor and one RLE list per image, one RLE per row.")
        f64 = {"dtype": torch.float64, "device": self.device}
        self.image_ids.append(ids)
        self.counts.append(torch.tensor([len(r) for r in rows], **f64))
        self.detections.append(torch.cat([r.to(**f64).reshape(-1) for r in rows]) if rows else torch.zeros(0, **f64))
        texts = [t.encode("ascii") for image in masks for t in image]
        self.rle_lengths.append(torch.tensor([len(t) for t in texts], **f64))
        self.rle_bytes.append(torch.tensor(list(b"".join(texts)), **f64))

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """pycocotools bbox and segm COCOeval over the images evaluated."""
        gt = self.ground_truth() if callable(self.ground_truth) else self.ground_truth
        ids = _cat(self.image_ids, torch.float64).long().tolist()
        counts = _cat(self.counts, torch.float64).long().tolist()
        rows = _cat(self.detections, torch.float64, len(ROW))
        lengths = _cat(self.rle_lengths, torch.float64).long().tolist()
        data = bytes(_cat(self.rle_bytes, torch.float64).long().tolist())
        texts, start = [], 0
        for length in lengths:
            texts.append(data[start : start + length].decode("ascii"))
            start += length
        first: dict[int, tuple[torch.Tensor, list[str]]] = {}
        at = 0
        for image_id, count in zip(ids, counts, strict=True):
            first.setdefault(image_id, (rows[at : at + count], texts[at : at + count]))  # a repeat: its first copy
            at += count
        order = sorted(first)
        kept_rows = torch.cat([first[i][0] for i in order]) if order else rows[:0]
        kept_texts = [t for i in order for t in first[i][1]]
        sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt.dataset["images"]}
        boxes, masks = instance_results(kept_rows, kept_texts, sizes)
        names = {c["id"]: str(c.get("name", c["id"])) for c in gt.dataset["categories"]}
        out: dict[str, Any] = {}
        for kind, results in (("mask", masks), ("box", boxes)):
            stats, per_class, evaluator = coco_evaluate(
                gt, results, image_ids=order, iou_type="segm" if kind == "mask" else "bbox"
            )
            out.update({f"{kind}_{k}": v for k, v in stats.items()})
            out[f"per_class_{kind}_table"] = class_table(evaluator, names)
            out[f"_{kind}_pr_curves"] = pr_curves(evaluator, names)
            out[f"per_class_{kind}_AP"] = {
                names.get(c, str(c)): (None if math.isnan(ap) else ap) for c, ap in per_class.items()
            }
        out["coco_stats"] = {f"{kind}_{k}": out[f"{kind}_{k}"] for kind in ("mask", "box") for k in STAT_NAMES}
        return out
