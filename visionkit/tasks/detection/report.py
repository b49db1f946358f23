"""Per-class detection reports from a finished pycocotools COCOeval: the P / R / mAP50 / mAP50-95 / instances
table, and the precision-recall and F1-confidence curves at IoU 0.5 (what AP50 is the area of).

COCOeval's `precision[t, r, k, a, m]` is the interpolated precision at the 101 recall points `r` for IoU
threshold `t`, class `k`, area `a` (0: all) and detection limit `m` (-1: 100); `scores[t, r, k, a, m]` the
confidence at which that recall is reached. AP50 is the mean of a class's 101 precisions at IoU 0.5, so the
curves written here have exactly that area. P and R in the table are read off the IoU-0.5 curve where F1 is
highest, as the toolkits users know report them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from visionkit.engine.plots import confusion_image, pyplot

TABLE_COLUMNS = ("class", "instances", "P", "R", "mAP50", "mAP50-95")


def _instances(evaluator: Any) -> dict[int, int]:
    """Ground-truth objects per category id over the evaluated images (crowds left out, as COCO scores)."""
    counts: dict[int, int] = {int(c): 0 for c in evaluator.params.catIds}
    images = set(evaluator.params.imgIds)
    for ann in evaluator.cocoGt.dataset.get("annotations", []):
        if ann.get("image_id") in images and not ann.get("iscrowd") and ann.get("category_id") in counts:
            counts[ann["category_id"]] += 1
    return counts


def _best_f1(precision: np.ndarray, recall: np.ndarray) -> tuple[float, float]:
    """(P, R) where F1 of a curve is highest; (0, 0) for a curve that never rises."""
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-16)
    k = int(np.argmax(f1))
    return (float(precision[k]), float(recall[k])) if f1[k] > 0 else (0.0, 0.0)


def class_table(evaluator: Any, names: Mapping[int, str]) -> dict[str, Any]:
    """The per-class table (and its `all` row) of an accumulated COCOeval: columns and rows of plain values."""
    precision, recall = evaluator.eval["precision"], np.asarray(evaluator.params.recThrs)
    counts = _instances(evaluator)
    rows, ap50s, aps, ps, rs = [], [], [], [], []
    for k, cat_id in enumerate(evaluator.params.catIds):
        curve = precision[0, :, k, 0, -1]
        if (curve < 0).all():  # no ground truth of this class among the images
            rows.append([names.get(cat_id, str(cat_id)), counts[int(cat_id)], None, None, None, None])
            continue
        every = precision[:, :, k, 0, -1]
        ap50, ap = float(curve.mean()), float(every[every > -1].mean())
        p, r = _best_f1(curve, recall)
        rows.append([names.get(cat_id, str(cat_id)), counts[int(cat_id)], p, r, ap50, ap])
        ap50s, aps, ps, rs = ap50s + [ap50], aps + [ap], ps + [p], rs + [r]

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    total = ["all", sum(counts.values()), mean(ps), mean(rs), mean(ap50s), mean(aps)]
    return {"columns": list(TABLE_COLUMNS), "rows": [total, *rows]}


def pr_curves(evaluator: Any, names: Mapping[int, str]) -> dict[str, Any]:
    """IoU-0.5 curves per class with ground truth: precision over the 101 recall points, and F1 over confidence."""
    precision, scores = evaluator.eval["precision"], evaluator.eval["scores"]
    recall = np.asarray(evaluator.params.recThrs)
    classes = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        curve = precision[0, :, k, 0, -1]
        if (curve < 0).all():
            continue
        conf = scores[0, :, k, 0, -1]
        f1 = 2 * curve * recall / np.maximum(curve + recall, 1e-16)
        classes[names.get(cat_id, str(cat_id))] = {
            "precision": [round(float(v), 6) for v in curve],
            "confidence": [round(float(v), 6) for v in conf],
            "f1": [round(float(v), 6) for v in f1],
            "ap50": float(curve.mean()),
        }
    mean = np.mean([c["precision"] for c in classes.values()], axis=0) if classes else np.zeros(len(recall))
    return {"iou": 0.5, "recall": [round(float(v), 6) for v in recall], "classes": classes,
            "mean_precision": [round(float(v), 6) for v in mean]}  # fmt: skip


def curve_area(curves: Mapping[str, Any]) -> float:
    """The area under the mean precision-recall curve by COCO's 101-point rule: the run's AP50."""
    values = curves["mean_precision"]
    return float(np.mean(values)) if values else math.nan


def plot_curves(curves: Mapping[str, Any], out_dir: Path, prefix: str = "") -> list[Path]:
    """PR_curve.png (precision over recall) and F1_curve.png (F1 over confidence), one line per class and
    the mean in bold; returns the files written."""
    plt = pyplot()

    written = []
    recall = curves["recall"]
    for name, (x_key, y_key, x_label, y_label) in {
        "PR_curve.png": ("recall", "precision", "recall", "precision"),
        "F1_curve.png": ("confidence", "f1", "confidence", "F1"),
    }.items():
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
        for cls, c in curves["classes"].items():
            xs = recall if x_key == "recall" else c[x_key]
            label = f"{cls} {c['ap50']:.3f}" if y_key == "precision" else cls
            ax.plot(xs, c[y_key], linewidth=1, label=label)
        if y_key == "precision":
            ax.plot(recall, curves["mean_precision"], color="black", linewidth=2.5,
                    label=f"all classes {curve_area(curves):.3f} mAP50")  # fmt: skip
        ax.set(xlabel=x_label, ylabel=y_label, xlim=(0, 1), ylim=(0, 1.02), title=f"{prefix}{y_label} at IoU 0.5")
        ax.legend(fontsize=7, loc="lower left" if y_key == "precision" else "lower center")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{prefix}{name}"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def detection_confusion(
    gt: Any, results: list[dict[str, Any]], image_ids: list[int], names: Mapping[int, str],
    conf: float = 0.25, iou: float = 0.5,
) -> dict[str, Any]:  # fmt: skip
    """The detection confusion matrix with a background class: rows the true class (last: background, i.e.
    false detections), columns the predicted class (last: background, i.e. missed objects). Detections at or
    above `conf`, best score first, each take the unmatched ground-truth box (any class, crowds left out) it
    overlaps most at IoU >= `iou`."""
    cat_ids = sorted(names)
    index = {c: i for i, c in enumerate(cat_ids)}
    back = len(cat_ids)
    matrix = np.zeros((back + 1, back + 1), np.int64)
    wanted = set(image_ids)
    truth: dict[int, list[tuple[list[float], int]]] = {i: [] for i in wanted}
    for ann in gt.dataset.get("annotations", []):
        if ann.get("image_id") in wanted and not ann.get("iscrowd") and ann.get("category_id") in index:
            truth[ann["image_id"]].append((ann["bbox"], index[ann["category_id"]]))
    found: dict[int, list[dict[str, Any]]] = {i: [] for i in wanted}
    for r in results:
        if r["image_id"] in wanted and r["score"] >= conf and r["category_id"] in index:
            found[r["image_id"]].append(r)
    for image_id in wanted:
        boxes = truth[image_id]
        taken = [False] * len(boxes)
        for det in sorted(found[image_id], key=lambda r: -r["score"]):
            overlaps = [_iou_xywh(det["bbox"], b) if not taken[k] else -1.0 for k, (b, _) in enumerate(boxes)]
            k = int(np.argmax(overlaps)) if overlaps else -1
            if k >= 0 and overlaps[k] >= iou:
                taken[k] = True
                matrix[boxes[k][1], index[det["category_id"]]] += 1
            else:
                matrix[back, index[det["category_id"]]] += 1
        for k, (_, label) in enumerate(boxes):
            if not taken[k]:
                matrix[label, back] += 1
    labels = [names[c] for c in cat_ids] + ["background"]
    return {"names": labels, "matrix": matrix.tolist(), "conf": conf, "iou": iou}


def _iou_xywh(a: list[float], b: list[float]) -> float:
    """IoU of two COCO [x, y, w, h] boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w, h = max(0.0, min(ax2, bx2) - max(a[0], b[0])), max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def plot_confusion(confusion: Mapping[str, Any], path: Path) -> None:
    """confusion_matrix.png: counts, rows true and columns predicted, background last."""
    title = f"detections (score >= {confusion['conf']}, IoU >= {confusion['iou']})"
    confusion_image(confusion["matrix"], confusion["names"], path, title, count_limit=25, rotate_over=8)
