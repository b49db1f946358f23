"""Per-class detection reports on a held-out case: the table's mAP50 / mAP50-95 equal pycocotools run class by
class, the PR curve's area equals AP50, P and R sit on the curve at its best F1, and the pictures are drawn."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from tests.conftest import run_tool
from visionkit.engine.tables import as_table, format_table, report_lines
from visionkit.tasks.detection.datasets import quiet_coco
from visionkit.tasks.detection.evaluation import load_results
from visionkit.tasks.detection.metrics import CocoMAP
from visionkit.tasks.detection.report import curve_area, plot_curves


def _held_out(seed: int = 3) -> tuple[dict, list[torch.Tensor]]:
    """Ground truth for 3 classes (ids 1, 5, 9) over 12 images and noisy detections with misses and false ones."""
    rng = np.random.default_rng(seed)
    images, anns, rows = [], [], []
    for image_id in range(1, 13):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 100, "height": 80})
        found = []
        for _ in range(rng.integers(1, 5)):
            cat = int(rng.choice([1, 5, 9]))
            x, y, w, h = rng.uniform(0, 60), rng.uniform(0, 40), rng.uniform(8, 40), rng.uniform(8, 40)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})  # fmt: skip
            if rng.random() < 0.8:  # found, a little off, maybe as another class
                label = cat if rng.random() < 0.85 else int(rng.choice([1, 5, 9]))
                jitter = rng.normal(0, 2.5, 4)
                found.append([image_id, x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3],
                              rng.uniform(0.3, 1.0), label])  # fmt: skip
        for _ in range(rng.integers(0, 3)):  # false detections
            found.append([image_id, *rng.uniform(0, 60, 2), *rng.uniform(5, 30, 2), rng.uniform(0, 0.6),
                          int(rng.choice([1, 5, 9]))])  # fmt: skip
        rows.append(torch.tensor(found, dtype=torch.float64).reshape(-1, 7))
    cats = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    return {"images": images, "annotations": anns, "categories": cats}, rows


def _pycocotools(data: dict, results: list[dict], cat_ids: list[int] | None = None) -> np.ndarray:
    gt = quiet_coco(copy.deepcopy(data))
    ev = COCOeval(gt, load_results(gt, results), iouType="bbox")
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_class_table_and_pr_curve_agree_with_pycocotools(tmp_path: Path) -> None:
    data, rows = _held_out()
    metric = CocoMAP(quiet_coco(copy.deepcopy(data)))
    metric.update({"image_ids": list(range(1, 13)), "detections": rows})
    out = metric.compute()
    table = out["per_class_table"]
    assert table["columns"] == ["class", "instances", "P", "R", "mAP50", "mAP50-95"]
    results = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": r[1:5].tolist(), "score": float(r[5])}
               for image in rows for r in image]  # fmt: skip
    by_name = {row[0]: row for row in table["rows"]}
    for cat in data["categories"]:
        stats = _pycocotools(data, results, [cat["id"]])
        name, instances, p, r, ap50, ap = by_name[cat["name"]]
        assert instances == sum(a["category_id"] == cat["id"] for a in data["annotations"])
        assert ap == pytest.approx(stats[0], abs=1e-9) and ap50 == pytest.approx(stats[1], abs=1e-9)
        assert out["per_class_AP"][cat["name"]] == pytest.approx(ap, abs=1e-12)
        curve = out["_pr_curves"]["classes"][cat["name"]]
        assert np.mean(curve["precision"]) == pytest.approx(ap50, abs=1e-5)  # the curve's area is its AP50
        f1 = 2 * p * r / (p + r)
        assert f1 == pytest.approx(max(curve["f1"]), abs=1e-5) and 0 < r <= 1  # P, R at the best F1
    overall = _pycocotools(data, results)
    assert by_name["all"][4] == pytest.approx(overall[1], abs=1e-9) and by_name["all"][5] == pytest.approx(overall[0])
    assert curve_area(out["_pr_curves"]) == pytest.approx(out["mAP50"], abs=1e-3)
    written = plot_curves(out["_pr_curves"], tmp_path)
    assert [p.name for p in written] == ["PR_curve.png", "F1_curve.png"] and all(
        p.stat().st_size > 5000 for p in written
    )
    lines = format_table(table, "per_class_table:")
    assert lines[1].split() == ["class", "instances", "P", "R", "mAP50", "mAP50-95"] and lines[2].split()[0] == "all"


def test_the_reporter_renders_every_tasks_table_shape() -> None:
    seg = [{"class": "road", "iou": 0.5, "acc": 0.75, "pixels": 10}, {"class": "sky", "iou": None, "acc": None,
           "pixels": 0}]  # fmt: skip
    assert as_table(seg)["rows"][1] == ["sky", None, None, 0]
    assert as_table({"a": 0.5, "b": None})["rows"] == [["a", 0.5], ["b", None]]
    lines = report_lines({"val/top1": 0.9, "per_class_accuracy": {"a": 0.5, "b": 1.0}, "_hidden": {"x": 1.0}})
    assert lines[0].split() == ["val/top1", "0.9000"] and lines[1] == "per_class_accuracy:"
    assert [line.split() for line in lines[3:]] == [["a", "0.500"], ["b", "1.000"]]


def test_eval_prints_the_table_and_json_on_request(tmp_path: Path) -> None:
    data, rows = _held_out()
    (tmp_path / "ann.json").write_text(json.dumps(data))
    results = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": r[1:5].tolist(), "score": float(r[5])}
               for image in rows for r in image]  # fmt: skip
    (tmp_path / "res.json").write_text(json.dumps(results))
    args = ["--results", str(tmp_path / "res.json"), "--ann", str(tmp_path / "ann.json")]
    machine = run_tool("eval", *args, "--json")
    assert machine.returncode == 0 and "mAP50" in json.loads(machine.stdout)
    human = run_tool("eval", *args)
    assert human.returncode == 0 and "mAP50" in human.stdout and "per_class_AP:" in human.stdout


def test_labels_go_outside_their_box_where_they_fit() -> None:
    from visionkit.tasks.detection.visualize import LABEL_HEIGHT, label_position

    assert label_position(10, 40, 60, 50, 200, 100) == (10, 40 - LABEL_HEIGHT)  # above
    assert label_position(10, 2, 60, 50, 200, 100) == (10, 61)  # at the top edge: below the box
    assert label_position(10, 2, 95, 50, 200, 100) == (11, 2)  # no room either side: inside
    assert label_position(180, 40, 60, 50, 200, 100)[0] == 150  # kept inside the picture


def test_detection_confusion_matrix_counts_swaps_false_and_missed_boxes(tmp_path: Path) -> None:
    from visionkit.tasks.detection.report import detection_confusion, plot_confusion

    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [10, 60, 20, 20], "area": 400, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    results = [
        {"image_id": 1, "category_id": 2, "bbox": [11, 10, 20, 20], "score": 0.9},  # the cat, called a dog
        {"image_id": 1, "category_id": 1, "bbox": [12, 11, 20, 20], "score": 0.8},  # the cat again: nothing left
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 5, 5], "score": 0.7},  # nothing there
        {"image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "score": 0.1},  # under the score cut
    ]
    out = detection_confusion(quiet_coco(data), results, [1], {1: "cat", 2: "dog"})
    assert out["names"] == ["cat", "dog", "background"]
    #            predicted: cat dog background(missed)
    assert out["matrix"] == [[0, 1, 0], [0, 0, 1], [2, 0, 0]]  # the crowd region counts nowhere
    plot_confusion(out, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 3000
