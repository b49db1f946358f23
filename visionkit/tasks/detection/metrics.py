"""COCO mAP as a torchmetrics-based Metric: detections gathered over ranks, scored by pycocotools."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pycocotools.coco import COCO

from visionkit.engine.contracts import Metric
from visionkit.registry import METRICS
from visionkit.tasks.detection.evaluation import STAT_NAMES, coco_evaluate
from visionkit.tasks.detection.report import class_table, detection_confusion, pr_curves

# One float64 row per detection: image id, COCO box (x, y, w, h in the annotated image's pixels), score, category id.
ROW = ("image_id", "x", "y", "w", "h", "score", "category_id")


def coco_rows(
    prediction: Mapping[str, torch.Tensor],
    image_id: int,
    category_ids: torch.Tensor,
    scale: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """One image's detections (xyxy, labels 0..C-1) as float64 rows; the numbers `to_coco_results` gives."""
    boxes = prediction["boxes"].detach().float().reshape(-1, 4).double()
    scores = prediction["scores"].detach().float().reshape(-1).double()
    labels = prediction["labels"].detach().reshape(-1).long()
    sx, sy = scale
    x1, y1, x2, y2 = boxes.unbind(1)
    ids = torch.full_like(scores, float(image_id))
    cats = category_ids.to(labels.device)[labels].double()
    return torch.stack([ids, x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy, scores, cats], 1)


def rows_to_results(rows: torch.Tensor) -> list[dict[str, Any]]:
    """Float64 detection rows -> COCO result dicts."""
    return [
        {"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [r[1], r[2], r[3], r[4]], "score": r[5]}
        for r in rows.cpu().tolist()
    ]


def _cat(state: Any, dtype: torch.dtype, width: int = 0) -> torch.Tensor:
    """A list state (local: a list of tensors; after sync: possibly one tensor) as one CPU tensor."""
    if isinstance(state, torch.Tensor):
        parts = [state]
    else:
        parts = list(state)
    parts = [p.reshape(-1, width) if width else p.reshape(-1) for p in parts]
    if not parts:
        return torch.zeros((0, width) if width else (0,), dtype=dtype)
    return torch.cat([p.to("cpu", dtype) for p in parts])


@METRICS.register("coco_map", task="detection")
class CocoMAP(Metric):
    """COCO bbox evaluation (pycocotools): the 12 standard stats, per-class AP and the stats table.

    `update` takes a validation step's `image_ids` (one per image) and `detections` (one [N, 7] float64 row
    tensor per image, see ROW). States are flat float64 list states reduced with `cat` (a rank without data
    sends an empty one), so every rank's detections reach `compute`; images a distributed sampler repeats
    are counted once. `ground_truth` is the validation
    data's pycocotools COCO object, or a callable returning it (called only in `compute`).
    """

    inputs = ("image_ids", "detections")

    def __init__(self, ground_truth: COCO | Callable[[], COCO]) -> None:
        super().__init__()
        self.ground_truth = ground_truth
        self.add_state("image_ids", [], dist_reduce_fx="cat")
        self.add_state("counts", [], dist_reduce_fx="cat")
        self.add_state("detections", [], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)  # a rank with nothing to gather sends an empty tensor of this dtype

    def update(self, outputs: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Add one batch: image ids and, per image, its detection rows (all kept as flat float64 tensors)."""
        rows: Sequence[torch.Tensor] = outputs["detections"]
        ids = torch.as_tensor(outputs["image_ids"], dtype=torch.float64, device=self.device).reshape(-1)
        if len(rows) != len(ids):
            raise ValueError(f"coco_map: {len(ids)} image ids but {len(rows)} detection tensors.")
        self.image_ids.append(ids)
        self.counts.append(torch.tensor([len(r) for r in rows], dtype=torch.float64, device=self.device))
        flat = [r.to(self.device, torch.float64).reshape(-1) for r in rows]
        self.detections.append(torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64, device=self.device))

    def results(self) -> tuple[list[dict[str, Any]], list[int]]:
        """(COCO results sorted by image id, the evaluated image ids), each image counted once."""
        ids = _cat(self.image_ids, torch.float64).long().tolist()
        counts = _cat(self.counts, torch.float64).long().tolist()
        rows = _cat(self.detections, torch.float64, len(ROW))
        first: dict[int, torch.Tensor] = {}
        start = 0
        for image_id, count in zip(ids, counts, strict=True):
            first.setdefault(image_id, rows[start : start + count])  # a repeated image: keep its first copy
            start += count
        kept = [first[i] for i in sorted(first)]
        return rows_to_results(torch.cat(kept) if kept else rows[:0]), sorted(first)

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """pycocotools COCOeval over the images evaluated: stats, per_class_AP (None for NaN), coco_stats."""
        gt = self.ground_truth() if callable(self.ground_truth) else self.ground_truth
        results, image_ids = self.results()
        stats, per_class, evaluator = coco_evaluate(gt, results, image_ids=image_ids)
        names = {c["id"]: str(c.get("name", c["id"])) for c in gt.dataset["categories"]}
        return {
            **stats,
            "per_class_AP": {names.get(c, str(c)): (None if math.isnan(ap) else ap) for c, ap in per_class.items()},
            "coco_stats": {k: stats[k] for k in STAT_NAMES},
            "per_class_table": class_table(evaluator, names),
            "_pr_curves": pr_curves(evaluator, names),  # for the pictures; '_' extras stay out of summary.json
            "confusion_matrix": detection_confusion(gt, results, image_ids, names),
        }
