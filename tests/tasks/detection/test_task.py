"""The detection task on the core: config checks, steps, COCO metrics equal to pycocotools, samples, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.utilities import dim_zero_cat

import visionkit
from tests.tasks.detection.helpers import pycocotools_stats, write_coco, write_image
from visionkit import StepContext, load_config
from visionkit.api import load_model
from visionkit.config import CONFIG_ROOT
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.metrics import Evaluator
from visionkit.engine.predictor import Predictor
from visionkit.errors import ConfigError, DataError
from visionkit.registry import TASKS
from visionkit.tasks.detection import task as task_module
from visionkit.tasks.detection.evaluation import STAT_NAMES, to_coco_results
from visionkit.tasks.detection.metrics import CocoMAP

MODEL = {"name": "fcos", "backbone": "tiny", "fpn_channels": 64, "head_convs": 1}


def config(tmp_path: Path, **data) -> dict:
    ann, images = write_coco(tmp_path)
    spec = {"name": "coco", "ann_file": str(ann), "image_dir": str(images)}
    return load_config(
        {"task": "det", "model": MODEL, "data": {"train": spec, "val": spec, "image_size": 64, "batch_size": 2, **data}}
    )


@pytest.mark.parametrize(
    "name", ["default", "coco", "yolo_txt_format", "yolo_txt_format_cpu", "voc", "yolo_n", "yolo_s"]
)
def test_shipped_configs_validate(name) -> None:
    cfg = load_config(CONFIG_ROOT / "det" / f"{name}.yaml")
    assert cfg["task"] == "detection" and TASKS.get("det").monitor == "val/mAP"


def test_the_renamed_data_format_config_says_its_new_name() -> None:
    with pytest.raises(ConfigError, match="det/yolo_txt_format.yaml now .*det/yolo_n.yaml"):
        load_config("det/yolo.yaml")


def test_config_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="data.num_classes must be a positive integer"):
        config(tmp_path, num_classes=0)
    with pytest.raises(ConfigError, match="data.class_names must be a list of data.num_classes=2"):
        config(tmp_path, num_classes=2, class_names=["a"])
    with pytest.raises(ConfigError, match="has no option 'fpn_channel'.*fpn_channels"):
        load_config({"task": "det", "model": {**MODEL, "fpn_channel": 8}})
    with pytest.raises(ConfigError, match="data.min_visibility"):
        config(tmp_path, min_visibility=2)


def build(cfg: dict):
    """A task with its datasets built and facts set, as the core does before building the model."""
    task = TASKS.get("det")(cfg)
    train, val = task.build_dataset("train"), task.build_dataset("val")
    task.facts = task.data_facts(train, val)
    return task


def test_classes_come_from_the_data_as_facts_and_are_checked(tmp_path) -> None:
    cfg = config(tmp_path)
    task = build(cfg)
    model = task.build_model(task.facts)
    assert task.facts.num_classes == 3 and task.facts.class_names == ["cat", "dog", "bird"]
    assert task.facts.category_ids == [3, 7, 11] and model.num_classes == 3
    assert task.facts.image_size == 64 and task.facts.channels == 3  # the input size of the config
    assert cfg["data"]["num_classes"] is None and cfg["data"]["class_names"] is None  # nothing written into cfg
    assert cfg["data"]["category_ids"] is None
    wrong = TASKS.get("det")(config(tmp_path / "b", num_classes=5))
    with pytest.raises(DataError, match="data.num_classes is 5 but data.train defines 3 classes"):
        wrong.data_facts(wrong.build_dataset("train"), None)
    named = TASKS.get("det")(config(tmp_path / "c", class_names=["cat", "bird", "dog"]))
    with pytest.raises(DataError, match=r"data.class_names \['cat', 'bird', 'dog'\] differ .* data.train"):
        named.data_facts(named.build_dataset("train"), None)


def test_training_step_returns_the_summed_detector_losses(tmp_path) -> None:
    cfg = config(tmp_path)
    task = build(cfg)
    train = task.build_dataset("train")
    model = task.build_model(task.facts)
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


def run_validation(task, model, ds, batch_size=2, metric=None) -> dict[str, float]:
    """Validation steps through the task's `metrics:` (coco_map) and the core Evaluator."""
    ctx = StepContext(model, model, torch.device("cpu"))
    evaluator = Evaluator([metric] if metric is not None else task.build_metrics(task.facts))
    evaluator.reset()
    for start in range(0, len(ds), batch_size):
        batch = task.collate([ds[i] for i in range(start, min(len(ds), start + batch_size))])
        evaluator.update(task.validation_step(batch, ctx), task.batch_size(batch))
    scalars, extras = evaluator.compute()
    task.last_extras = extras
    return scalars


def reference_results(task, model, ds) -> list[dict]:
    """The same detections as COCO results, converted independently of the metric (to_coco_results)."""
    results = []
    for i in range(len(ds)):
        image, target = ds[i]
        (output,) = model([image])
        scale = task_module.original_scale(image, target)
        results += to_coco_results(output, int(target["image_id"]), ds.category_ids, scale)
    return results


def test_validation_metrics_equal_pycocotools_on_the_same_detections(tmp_path) -> None:
    # the val images are resized (non-uniformly) before the model: boxes must be mapped back to the annotated size
    cfg = config(tmp_path, val_transforms=[{"name": "Resize", "height": 40, "width": 50}])
    task = build(cfg)
    ds = task.build_dataset("val")
    model = LookupDetector(fake_predictions(ds, np.random.default_rng(0)))
    metrics = run_validation(task, model, ds)
    assert sorted(metrics) == sorted(f"val/{k}" for k in STAT_NAMES)
    reference = pycocotools_stats(tmp_path / "annotations.json", reference_results(task, model, ds))
    assert np.allclose([metrics[f"val/{k}"] for k in STAT_NAMES], reference, rtol=0, atol=0)
    assert 0.2 < metrics["val/mAP"] < 1.0
    extras = task.last_extras
    assert set(extras["per_class_AP"]) == {"cat", "dog", "bird"}
    assert extras["coco_stats"]["mAP"] == metrics["val/mAP"]
    assert set(extras["coco_stats"]) == set(STAT_NAMES)


def test_perfect_predictions_through_the_task_give_map_one(tmp_path) -> None:
    cfg = config(tmp_path, val_transforms=[{"name": "Resize", "height": 32, "width": 32}])
    task = build(cfg)
    ds = task.build_dataset("val")
    table = {}
    for i in range(len(ds)):
        image, target = ds[i]
        table[round(float(image.sum()), 2)] = {**target, "scores": torch.ones(len(target["labels"]))}
    metrics = run_validation(task, LookupDetector(table), ds)
    assert metrics["val/mAP"] == pytest.approx(1.0) and metrics["val/mAP50"] == pytest.approx(1.0)


def test_compute_twice_gives_the_same_numbers(tmp_path) -> None:
    task = build(config(tmp_path))
    ds = task.build_dataset("val")
    model = LookupDetector(fake_predictions(ds, np.random.default_rng(2)))
    (metric,) = task.build_metrics(task.facts)
    assert isinstance(metric, CocoMAP)
    run_validation(task, model, ds, metric=metric)
    first, second = metric.compute(), metric.compute()
    assert first == second and 0 < first["mAP"] < 1
    metric._computed = None  # recompute from the states, not from torchmetrics' cache
    assert metric.compute() == first


def test_detections_are_gathered_across_ranks_once_per_image(tmp_path) -> None:
    """Two ranks through torchmetrics' real sync path (a stand-in gather); rank 1 repeats an image of rank 0."""
    task = build(config(tmp_path))
    ds = task.build_dataset("val")
    model = LookupDetector(fake_predictions(ds, np.random.default_rng(1)))
    single = run_validation(task, model, ds)
    ctx = StepContext(model, model, torch.device("cpu"))
    ranks = []
    for indices in ([0, 1], [1, 2]):  # the last image of rank 0 repeated, as a padded sampler does
        (metric,) = task.build_metrics(task.facts)
        for i in indices:
            metric.update(task.validation_step(task.collate([ds[i]]), ctx))
        ranks.append(metric)
    other = {name: dim_zero_cat(getattr(ranks[1], name)) for name in ("image_ids", "counts", "detections")}
    order = iter(["image_ids", "counts", "detections"])  # states are gathered in add_state order

    def gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        return [tensor, other[next(order)]]

    merged = ranks[0]
    merged.dist_sync_fn = gather
    merged.distributed_available_fn = lambda: True
    out = merged.compute()
    assert next(order, None) is None  # every state went through the gather
    assert {f"val/{k}": v for k, v in out.items() if k in STAT_NAMES} == single
    assert out["per_class_AP"] == task.last_extras["per_class_AP"]
    assert len(merged.image_ids) == 2 and merged.image_ids[0].tolist() == [10]  # local states restored after sync


def predict(task, model, inputs, out, **options) -> dict:
    return Predictor(task, model).run([str(i) for i in inputs], out, options)


def test_samples_and_prediction(tmp_path) -> None:
    task = build(config(tmp_path))
    ds = task.build_dataset("val")
    model = task.build_model(task.facts).eval()
    ctx = StepContext(model, model, torch.device("cpu"))
    task.on_validation_end(ctx, ds, tmp_path / "run", 3, {"val/mAP": 0.0})
    assert (tmp_path / "run" / "samples" / "val_epoch003.png").is_file()
    out = predict(task, model, [tmp_path / "images"], tmp_path / "pred", score_threshold=0.0)
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    index = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert out["num_images"] == 3 and len(results) == out["num_detections"] > 0
    assert {r["category_id"] for r in results} <= {3, 7, 11}  # the data's own category ids
    assert {im["id"] for im in index["images"]} == {1, 2, 3} and len(
        list((tmp_path / "pred" / "images").iterdir())
    ) == 3
    assert index["categories"] == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 11, "name": "bird"}]
    assert all(len(r["bbox"]) == 4 and 0 <= r["score"] <= 1 for r in results)
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"]
    assert sum(len(r["detections"]) for r in records) == len(results)  # threshold 0: every detection listed
    assert {d["class"] for r in records for d in r["detections"]} <= {"cat", "dog", "bird"}
    # boxes are in the original image's pixels: the same numbers as the validation step's conversion
    (image, target) = ds[1]
    (output,) = model([image])
    expected = to_coco_results(output, 2, ds.category_ids, task_module.original_scale(image, target))
    got = [r for r in results if r["image_id"] == out["image_ids"][str(tmp_path / "images" / "b.png")]]
    assert np.allclose([r["bbox"] for r in got], [r["bbox"] for r in expected], atol=1e-3)
    ann = tmp_path / "annotations.json"
    out = predict(task, model, [tmp_path / "images" / "b.png"], tmp_path / "pred2", ann_file=str(ann))
    assert out["image_ids"] == {str(tmp_path / "images" / "b.png"): 20}  # ids from the annotation file, by path
    with pytest.raises(ConfigError, match="Unknown predict option"):
        predict(task, model, [tmp_path / "images"], tmp_path / "pred3", treshold=1)


def test_facts_travel_in_the_checkpoint_not_the_config(tmp_path) -> None:
    cfg = config(tmp_path)
    cfg["trainer"].update(max_steps=1, epochs=1, progress=False)
    cfg["detection"]["num_samples"] = 0
    result = visionkit.train(cfg, work_dir=tmp_path / "run")
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["facts"]["class_names"] == ["cat", "dog", "bird"] and ckpt["facts"]["category_ids"] == [3, 7, 11]
    assert ckpt["facts"]["num_classes"] == 3 and ckpt["facts"]["image_size"] == 64
    data = ckpt["config"]["data"]
    assert data["num_classes"] is None and data["class_names"] is None and data["category_ids"] is None
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert set(summary["per_class_AP"]) == {"cat", "dog", "bird"} and set(summary["coco_stats"]) == set(STAT_NAMES)
    task, _, _ = load_model(result.best_checkpoint)
    assert task.facts.category_ids == [3, 7, 11] and task.facts.names == ["cat", "dog", "bird"]


def test_same_named_images_in_different_folders_are_different_images(tmp_path) -> None:
    task = build(config(tmp_path))
    model = task.build_model(task.facts).eval()
    write_image(tmp_path / "in" / "a" / "x.png", 40, 30, seed=1)
    write_image(tmp_path / "in" / "b" / "x.png", 30, 40, seed=2)
    out = predict(task, model, [tmp_path / "in"], tmp_path / "pred", score_threshold=0.0)
    records = out["predictions"]
    assert [r["input"] for r in records] == [str(tmp_path / "in" / "a" / "x.png"), str(tmp_path / "in" / "b" / "x.png")]
    assert [r["images"] for r in records] == ["images/a/x.png", "images/b/x.png"]
    assert (tmp_path / "pred" / "images" / "a" / "x.png").is_file() and (tmp_path / "pred/images/b/x.png").is_file()
    index = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert [(im["id"], im["width"], im["height"]) for im in index["images"]] == [(1, 40, 30), (2, 30, 40)]
    assert sorted(out["image_ids"].values()) == [1, 2]
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2}


def annotation_file(tmp_path: Path, categories: list[dict], images: list[dict]) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    return path


def test_ann_file_maps_images_by_path_and_categories_by_name(tmp_path) -> None:
    task = build(config(tmp_path))
    model = task.build_model(task.facts).eval()
    write_image(tmp_path / "in" / "a" / "x.png", 40, 30, seed=1)
    write_image(tmp_path / "in" / "b" / "x.png", 30, 40, seed=2)
    images = [
        {"id": 501, "file_name": "b/x.png", "width": 30, "height": 40},
        {"id": 502, "file_name": "a/x.png", "width": 40, "height": 30},
    ]
    # the same names as the checkpoint's classes (cat, dog, bird) under other ids and in another order
    categories = [{"id": 1, "name": "bird"}, {"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}]
    ann = annotation_file(tmp_path, categories, images)
    out = predict(task, model, [tmp_path / "in"], tmp_path / "pred", score_threshold=0.0, ann_file=str(ann))
    assert out["image_ids"] == {str(tmp_path / "in" / "a" / "x.png"): 502, str(tmp_path / "in" / "b" / "x.png"): 501}
    by_name = {"cat": 2, "dog": 5, "bird": 1}
    detections = [d for r in out["predictions"] for d in r["detections"]]
    assert detections and all(d["category_id"] == by_name[d["class"]] for d in detections)
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert len(results) == len(detections) and {r["category_id"] for r in results} <= {1, 2, 5}
    index = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert index["categories"] == [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 1, "name": "bird"}]
    # a bare file name that two annotation images share is ambiguous
    write_image(tmp_path / "other" / "x.png", 20, 20)
    with pytest.raises(DataError, match="matches 2 images"):
        predict(task, model, [tmp_path / "other" / "x.png"], tmp_path / "pred2", ann_file=str(ann))


def test_ann_file_with_other_category_names_is_refused(tmp_path) -> None:
    task = build(config(tmp_path))
    model = task.build_model(task.facts).eval()
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "horse"}, {"id": 11, "name": "bird"}]
    ann = annotation_file(tmp_path, categories, [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}])
    match = r"categories \['cat', 'horse', 'bird'\] but the model predicts the classes \['cat', 'dog', 'bird'\]"
    with pytest.raises(DataError, match=match):
        predict(task, model, [tmp_path / "images" / "a.png"], tmp_path / "pred", ann_file=str(ann))
    assert not (tmp_path / "pred" / "predictions.json").exists()
