"""The detection task on the core: config checks, steps, COCO metrics equal to pycocotools, samples, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.tasks.detection.helpers import pycocotools_stats, write_coco
from visionkit.config import CONFIG_ROOT, load_config
from visionkit.errors import ConfigError
from visionkit.registry import TASKS
from visionkit.tasks.base import StepContext
from visionkit.tasks.detection import task as task_module
from visionkit.tasks.detection.evaluation import STAT_NAMES

MODEL = {"name": "fcos", "backbone": "tiny", "fpn_channels": 64, "head_convs": 1}


def config(tmp_path: Path, **data) -> dict:
    ann, images = write_coco(tmp_path)
    spec = {"name": "coco", "ann_file": str(ann), "image_dir": str(images)}
    return load_config(
        {"task": "det", "model": MODEL, "data": {"train": spec, "val": spec, "image_size": 64, "batch_size": 2, **data}}
    )


@pytest.mark.parametrize("name", ["default", "coco", "yolo", "voc"])
def test_shipped_configs_validate(name) -> None:
    cfg = load_config(CONFIG_ROOT / "det" / f"{name}.yaml")
    assert cfg["task"] == "detection" and TASKS.get("det").monitor == "val/mAP"


def test_config_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="data.num_classes must be a positive integer"):
        config(tmp_path, num_classes=0)
    with pytest.raises(ConfigError, match="data.class_names must be a list of data.num_classes=2"):
        config(tmp_path, num_classes=2, class_names=["a"])
    with pytest.raises(ConfigError, match="has no option 'fpn_channel'.*fpn_channels"):
        load_config({"task": "det", "model": {**MODEL, "fpn_channel": 8}})
    with pytest.raises(ConfigError, match="data.min_visibility"):
        config(tmp_path, min_visibility=2)


def test_classes_are_recorded_from_the_data_and_checked(tmp_path) -> None:
    cfg = config(tmp_path)
    task = TASKS.get("det")(cfg)
    model = task.build_model()  # reads the training data first to count the classes
    assert cfg["data"]["num_classes"] == 3 and cfg["data"]["class_names"] == ["cat", "dog", "bird"]
    assert cfg["data"]["category_ids"] == [3, 7, 11] and model.num_classes == 3
    wrong = TASKS.get("det")(config(tmp_path / "b", num_classes=5))
    with pytest.raises(ConfigError, match="data.num_classes is 5 but data.train defines 3 classes"):
        wrong.build_dataset("train")


def test_training_step_returns_the_summed_detector_losses(tmp_path) -> None:
    cfg = config(tmp_path)
    task = TASKS.get("det")(cfg)
    train = task.build_dataset("train")
    model = task.build_model()
    batch = task.collate([train[0], train[1]])
    model.train()
    out = task.training_step(batch, StepContext(model, model, torch.device("cpu")))
    parts = [k for k in out if k != "loss"]
    assert set(parts) == {"loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"}
    assert torch.allclose(out["loss"], sum(out[k] for k in parts)) and out["loss"].requires_grad


class LookupDetector(nn.Module):
    """Returns prepared detections for each image (found by its pixel sum)."""

    def __init__(self, table: dict[float, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.table = table
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        return [self.table[round(float(im.sum()), 2)] for im in images]


def fake_predictions(ds, rng: np.random.Generator) -> dict[float, dict[str, torch.Tensor]]:
    """Ground truth in transformed-image pixels, jittered, with random scores and a false positive per image."""
    table = {}
    for i in range(len(ds)):
        image, target = ds[i]
        boxes = target["boxes"] + torch.as_tensor(rng.normal(0, 1.0, tuple(target["boxes"].shape)), dtype=torch.float32)
        boxes = torch.cat([boxes, torch.tensor([[1.0, 1.0, 9.0, 9.0]])])
        labels = torch.cat([target["labels"], torch.tensor([0])])
        table[round(float(image.sum()), 2)] = {
            "boxes": boxes,
            "labels": labels,
            "scores": torch.as_tensor(rng.uniform(0.1, 1, len(labels)), dtype=torch.float32),
        }
    return table


def run_validation(task, model, ds, batch_size=2) -> dict[str, float]:
    ctx = StepContext(model, model, torch.device("cpu"))
    task.reset_metrics()
    for start in range(0, len(ds), batch_size):
        task.validation_step(task.collate([ds[i] for i in range(start, min(len(ds), start + batch_size))]), ctx)
    return task.compute_metrics()


def test_validation_metrics_equal_pycocotools_on_the_same_detections(tmp_path) -> None:
    # the val images are resized (non-uniformly) before the model: boxes must be mapped back to the annotated size
    cfg = config(tmp_path, val_transforms=[{"name": "Resize", "height": 40, "width": 50}])
    task = TASKS.get("det")(cfg)
    ds = task.build_dataset("val")
    model = LookupDetector(fake_predictions(ds, np.random.default_rng(0)))
    metrics = run_validation(task, model, ds)
    assert sorted(metrics) == sorted(f"val/{k}" for k in STAT_NAMES)
    results = [r for rs in task._results.values() for r in rs]
    reference = pycocotools_stats(tmp_path / "annotations.json", results)
    assert np.allclose([metrics[f"val/{k}"] for k in STAT_NAMES], reference, rtol=0, atol=0)
    assert 0.2 < metrics["val/mAP"] < 1.0
    extras = task.summary_extras()
    assert set(extras["per_class_AP"]) == {"cat", "dog", "bird"}
    assert extras["coco_stats"]["mAP"] == metrics["val/mAP"]


def test_perfect_predictions_through_the_task_give_map_one(tmp_path) -> None:
    cfg = config(tmp_path, val_transforms=[{"name": "Resize", "height": 32, "width": 32}])
    task = TASKS.get("det")(cfg)
    ds = task.build_dataset("val")
    table = {}
    for i in range(len(ds)):
        image, target = ds[i]
        table[round(float(image.sum()), 2)] = {**target, "scores": torch.ones(len(target["labels"]))}
    metrics = run_validation(task, LookupDetector(table), ds)
    assert metrics["val/mAP"] == pytest.approx(1.0) and metrics["val/mAP50"] == pytest.approx(1.0)


def test_results_are_gathered_across_ranks_once_per_image(tmp_path, monkeypatch) -> None:
    cfg = config(tmp_path)
    task = TASKS.get("det")(cfg)
    ds = task.build_dataset("val")
    model = LookupDetector(fake_predictions(ds, np.random.default_rng(1)))
    single = run_validation(task, model, ds)
    everything = dict(task._results)
    ids = sorted(everything)
    rank0 = {i: everything[i] for i in ids[:2]}
    rank1 = {i: everything[i] for i in ids[1:]}  # the last image of rank 0 repeated, as a padded sampler does
    monkeypatch.setattr(task_module, "all_gather_objects", lambda obj: [rank0, rank1])
    assert task.compute_metrics() == single


def test_samples_and_predict_files(tmp_path) -> None:
    cfg = config(tmp_path)
    task = TASKS.get("det")(cfg)
    ds = task.build_dataset("val")
    model = task.build_model().eval()
    task.on_validation_end(StepContext(model, model, torch.device("cpu")), ds, tmp_path / "run", 3)
    assert (tmp_path / "run" / "samples" / "val_epoch003.png").is_file()
    out = task.predict_files(model, [tmp_path / "images"], tmp_path / "pred", {"score_threshold": 0.0})
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    index = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert out["num_images"] == 3 and len(results) == out["num_detections"] > 0
    assert {r["category_id"] for r in results} <= {3, 7, 11}  # the data's own category ids
    assert {im["id"] for im in index["images"]} == {1, 2, 3} and len(
        list((tmp_path / "pred" / "images").iterdir())
    ) == 3
    assert all(len(r["bbox"]) == 4 and 0 <= r["score"] <= 1 for r in results)
    ann = tmp_path / "annotations.json"
    out = task.predict_files(model, [tmp_path / "images" / "b.png"], tmp_path / "pred2", {"ann_file": str(ann)})
    assert out["predictions"][0]["image_id"] == 20  # ids taken from the annotation file, by file name
    with pytest.raises(ConfigError, match="Unknown predict option"):
        task.predict_files(model, [tmp_path / "images"], tmp_path / "pred3", {"treshold": 1})
