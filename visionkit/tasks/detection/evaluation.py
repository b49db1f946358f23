"""COCO evaluation with pycocotools: the 12 standard stats, per-class AP, and results-file evaluation."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionkit.errors import DataError
from visionkit.tasks.detection.coco import read_coco_json
from visionkit.tasks.detection.datasets import quiet_coco
from visionkit.tasks.detection.report import class_table

# Names of COCOeval.stats in order (AP at IoU .50:.95 / .50 / .75, by area, then AR at 1/10/100 detections, by area).
STAT_NAMES = (
    "mAP",
    "mAP50",
    "mAP75",
    "mAP_small",
    "mAP_medium",
    "mAP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def to_coco_results(
    prediction: dict[str, torch.Tensor], image_id: int, category_ids: Sequence[int], scale: tuple[float, float] = (1, 1)
) -> list[dict[str, Any]]:
    """One image's detections (xyxy, labels 0..C-1) as COCO result dicts; `scale` maps boxes to the original image."""
    boxes = prediction["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    scores = prediction["scores"].detach().float().cpu().numpy().reshape(-1)
    labels = prediction["labels"].detach().cpu().numpy().reshape(-1)
    sx, sy = scale
    out = []
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[label]),
                "bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy],
                "score": float(score),
            }
        )
    return out


def load_results(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """pycocotools `loadRes`, quiet, and also for an empty list (which loadRes cannot take)."""
    if results:
        unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
        if unknown:
            raise DataError(
                f"Detections refer to {len(unknown)} image id(s) not in the annotations, e.g. {sorted(unknown)[:5]}."
            )
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(results))
    dt = COCO()
    dt.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def per_class_ap(evaluator: COCOeval) -> dict[int, float]:
    """AP@[.50:.95] per category id (all areas, 100 detections); NaN for a class without ground truth."""
    precision = evaluator.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[int(cat_id)] = float(np.mean(p)) if p.size else math.nan
    return out


def coco_evaluate(
    gt: COCO, results: list[dict[str, Any]], image_ids: Iterable[int] | None = None, iou_type: str = "bbox"
) -> tuple[dict[str, float], dict[int, float], COCOeval]:
    """Run COCOeval (`bbox`, or `segm` for mask results) over `image_ids` (default: every image in gt); return
    stats, per-class AP, evaluator."""
    dt = load_results(gt, results)
    evaluator = COCOeval(gt, dt, iouType=iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    return stats, per_class_ap(evaluator), evaluator


def evaluate_results_file(results_json: str | Path, ann_json: str | Path) -> dict[str, Any]:
    """Evaluate a COCO results JSON against a COCO annotation JSON: the 12 stats and per-class AP."""
    gt = quiet_coco(read_coco_json(ann_json, "annotation file"))
    path = Path(results_json)
    if not path.is_file():
        raise DataError(f"Results file '{path}' does not exist.")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"Results file '{path}' is not valid JSON: {exc}") from exc
    if isinstance(results, dict) and isinstance(results.get("annotations"), list):
        results = results["annotations"]
    if not isinstance(results, list) or any(
        not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r) for r in results
    ):
        raise DataError(
            f"Results file '{path}' must be a COCO results list: "
            '[{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}, ...].'
        )
    known = set(gt.getCatIds())
    bad = sorted({r["category_id"] for r in results} - known)
    if bad:
        raise DataError(f"Results file '{path}' uses category ids {bad[:10]} that '{ann_json}' does not define.")
    stats, per_class, evaluator = coco_evaluate(gt, results)
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt.dataset["categories"]}
    return {
        **{f"{k}": v for k, v in stats.items()},
        "per_class_AP": {names[c]: (None if math.isnan(ap) else ap) for c, ap in per_class.items()},
        "per_class_table": class_table(evaluator, names),
        "num_images": len(gt.getImgIds()),
        "num_detections": len(results),
    }
