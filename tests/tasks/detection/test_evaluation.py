"""COCO round trip: dataset -> detections -> COCOeval, checked against pycocotools run directly and by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tasks.detection.helpers import pycocotools_stats, write_coco
from visionkit.errors import DataError
from visionkit.tasks.detection import evaluate_results_file
from visionkit.tasks.detection.coco import coco_dataset
from visionkit.tasks.detection.evaluation import STAT_NAMES, coco_evaluate, to_coco_results


def ground_truth_detections(ds, score: float = 1.0) -> list[dict]:
    """Every trained (non-crowd) box of the dataset as a detection, through the task's own converter."""
    results = []
    for rec in ds.records:
        pred = {
            "boxes": torch.as_tensor(rec.boxes),
            "labels": torch.as_tensor(rec.labels),
            "scores": torch.full((len(rec.labels),), score),
        }
        results += to_coco_results(pred, rec.image_id, ds.category_ids)
    return results


@pytest.fixture
def dataset(tmp_path):
    ann, images = write_coco(tmp_path)
    return coco_dataset(str(ann), str(images)), ann


def test_perfect_detections_give_map_one(dataset) -> None:
    ds, ann = dataset
    results = ground_truth_detections(ds)
    stats, per_class, _ = coco_evaluate(ds.coco, results)
    assert stats["mAP"] == pytest.approx(1.0) and stats["mAP50"] == pytest.approx(1.0)
    assert stats["mAP75"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert stats["mAP_large"] == -1.0  # no large objects: pycocotools reports -1
    assert per_class == {3: pytest.approx(1.0), 7: pytest.approx(1.0), 11: pytest.approx(1.0)}
    assert np.allclose([stats[k] for k in STAT_NAMES], pycocotools_stats(ann, results))


def test_missing_detection_matches_hand_calculation(dataset) -> None:
    ds, ann = dataset
    results = [r for r in ground_truth_detections(ds) if r["bbox"] != [40.0, 2.0, 10.0, 6.0]]  # drop one 'cat'
    stats, per_class, _ = coco_evaluate(ds.coco, results)
    # 'cat' finds 1 of its 2 boxes at precision 1: 51 of the 101 recall points (0, .01, ..., .5) have precision 1
    assert per_class[3] == pytest.approx(51 / 101)
    assert stats["mAP"] == pytest.approx((1 + 1 + 51 / 101) / 3)
    assert np.allclose([stats[k] for k in STAT_NAMES], pycocotools_stats(ann, results))


def test_detection_on_a_crowd_region_is_ignored(dataset) -> None:
    ds, ann = dataset
    crowd = {"image_id": 20, "category_id": 3, "bbox": [1.0, 45.0, 38.0, 10.0], "score": 0.99}
    stats, _, _ = coco_evaluate(ds.coco, [*ground_truth_detections(ds), crowd])
    assert stats["mAP"] == pytest.approx(1.0)  # matched to the crowd box: neither true nor false positive
    assert np.allclose([stats[k] for k in STAT_NAMES], pycocotools_stats(ann, [*ground_truth_detections(ds), crowd]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_perturbations_match_pycocotools(dataset, seed) -> None:
    ds, ann = dataset
    rng = np.random.default_rng(seed)
    results = []
    for r in ground_truth_detections(ds):
        x, y, w, h = r["bbox"]
        jitter = rng.normal(0, 2.0, 4)
        results.append(
            {
                **r,
                "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
        if rng.random() < 0.5:  # a duplicate (a false positive once the first is matched)
            results.append({**r, "score": float(rng.uniform(0.0, 0.6))})
        if rng.random() < 0.3:  # a confused class
            other = [c for c in ds.category_ids if c != r["category_id"]][int(rng.integers(0, 2))]
            results.append({**r, "category_id": other, "score": float(rng.uniform(0.0, 1.0))})
    for _ in range(3):  # background false positives
        results.append(
            {
                "image_id": int(rng.choice([10, 20, 30])),
                "category_id": int(rng.choice(ds.category_ids)),
                "bbox": [float(v) for v in rng.uniform(0, 20, 4) + [0, 0, 4, 4]],
                "score": float(rng.random()),
            }
        )
    stats, _, _ = coco_evaluate(ds.coco, results)
    reference = pycocotools_stats(ann, results)
    assert np.allclose([stats[k] for k in STAT_NAMES], reference, atol=0, rtol=0)  # identical numbers
    assert 0 < stats["mAP"] < 1


def test_scale_maps_boxes_back_to_the_annotated_image() -> None:
    pred = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([1]),
    }
    (res,) = to_coco_results(pred, 7, [5, 9], scale=(2.0, 0.5))
    assert res == {"image_id": 7, "category_id": 9, "bbox": [20.0, 10.0, 40.0, 20.0], "score": 0.5}


def test_evaluate_results_file_equals_pycocotools(dataset, tmp_path) -> None:
    ds, ann = dataset
    results = [r for r in ground_truth_detections(ds, score=0.9) if r["category_id"] != 11]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = evaluate_results_file(path, ann)
    assert np.allclose([out[k] for k in STAT_NAMES], pycocotools_stats(ann, results))
    assert out["per_class_AP"]["bird"] == 0.0 and out["per_class_AP"]["dog"] == pytest.approx(1.0)
    assert out["num_detections"] == len(results) and out["num_images"] == 3


def test_evaluate_results_file_errors_and_empty_results(dataset, tmp_path) -> None:
    ds, ann = dataset
    path = tmp_path / "r.json"
    path.write_text("[]")
    out = evaluate_results_file(path, ann)
    assert out["mAP"] == 0.0 and out["AR100"] == 0.0  # no detections: nothing found (pycocotools cannot load [])
    path.write_text(json.dumps([{"image_id": 10, "category_id": 99, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(DataError, match=r"category ids \[99\]"):
        evaluate_results_file(path, ann)
    path.write_text(json.dumps([{"image_id": 12345, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(DataError, match="not in the annotations"):
        evaluate_results_file(path, ann)
    path.write_text(json.dumps([{"image_id": 10}]))
    with pytest.raises(DataError, match="COCO results list"):
        evaluate_results_file(path, ann)
