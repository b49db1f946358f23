"""Task-level behaviour: config checks, the shipped configs, prediction files and validation samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionkit.config import CONFIG_ROOT, load_config
from visionkit.errors import ConfigError, DataError
from visionkit.registry import TASKS
from visionkit.tasks.base import StepContext

from .conftest import build_dataset, write_folder_dataset
from .test_datasets import _annotations, _coco_files

SMALL_UNET = {"name": "unet", "encoder": "test_efficientnet", "decoder_channels": [16, 16, 8, 8, 8]}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data": {"class_names": ["a", "b"]}}, r"class_names must be a list of data.num_classes=4"),
        ({"data": {"ignore_index": 2}}, r"ignore_index is 2; it must be null or an integer outside"),
        ({"data": {"num_classes": 1}}, r"num_classes must be an integer >= 2"),
        ({"segmentation": {"overlay_alpha": 2}}, r"overlay_alpha must lie in \[0, 1\]"),
        ({"segmentation": {"num_sample": 2}}, r"Unknown config key 'segmentation.num_sample'.*num_samples"),
        ({"loss": {"name": "dice", "smoth": 1}}, r"loss 'dice' has no option 'smoth'.*smooth"),
        ({"model": {"name": "unett"}}, r"Unknown model 'unett'.*'unet'"),
    ],
)
def test_config_errors_name_the_key(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"task": "seg", **override})


def test_default_config_loads_and_names_the_classes() -> None:
    cfg = load_config(None, task="seg")
    assert cfg["task"] == "segmentation" and cfg["model"]["name"] == "unet"
    assert cfg["data"]["train"]["name"] == "shapes" and cfg["data"]["num_classes"] == 4
    assert TASKS.get("seg").monitor == "val/mIoU" and TASKS.get("seg").monitor_mode == "max"


def test_folder_and_coco_configs_build_their_datasets(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path / "f", count=2, num_classes=3)
    cfg = load_config(
        CONFIG_ROOT / "seg" / "folder.yaml", [f"data.train.root={tmp_path / 'f'}", f"data.val.root={tmp_path / 'f'}"]
    )
    task = TASKS.get(cfg["task"])(cfg)
    sample = task.build_dataset("train")[0]
    assert sample["image"].shape == (3, 256, 256) and sample["mask"].max() < 3
    ann, images = _coco_files(tmp_path / "c", _annotations())
    overrides = [
        f"data.{s}.{k}={v}"
        for s in ("train", "val")
        for k, v in (("annotations", ann), ("images", images), ("categories", "[dog, cat]"))
    ] + ["data.num_classes=3"]
    cfg = load_config(CONFIG_ROOT / "seg" / "coco.yaml", overrides)
    task = TASKS.get(cfg["task"])(cfg)
    val = task.build_dataset("val")
    assert cfg["data"]["class_names"] == ["background", "dog", "cat"]  # recorded for checkpoints and reports
    assert set(val[0]["mask"].unique().tolist()) == {0, 1, 2, 255}
    with pytest.raises(DataError, match="data.num_classes=3"):
        bad = load_config(CONFIG_ROOT / "seg" / "coco.yaml", overrides[:-1])
        TASKS.get("seg")(bad).build_dataset("train")


def _task_and_model(tmp_path: Path, num_classes: int = 3):
    write_folder_dataset(tmp_path / "data", count=3, num_classes=num_classes)
    cfg = load_config(
        {
            "task": "seg",
            "model": SMALL_UNET,
            "data": {
                "num_classes": num_classes,
                "class_names": ["bg", "red", "blue"],
                "val": {"name": "seg_folder", "root": str(tmp_path / "data")},
            },
            "segmentation": {"num_samples": 2},
        }
    )
    task = TASKS.get("seg")(cfg)
    model = task.build_model().eval()
    task.setup(model, torch.device("cpu"))
    return task, model


def test_predict_files_writes_index_masks_overlays_and_json(tmp_path: Path) -> None:
    task, model = _task_and_model(tmp_path)
    inputs = [tmp_path / "data" / "images", tmp_path / "data" / "images" / "img00.png"]  # a folder and a file
    result = task.predict_files(model, inputs, tmp_path / "out", {"alpha": 0.3})
    assert len(result["predictions"]) == 4 and result["class_names"] == ["bg", "red", "blue"]
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == result
    names = [p["mask"] for p in result["predictions"]]
    assert len(set(names)) == 4  # the repeated input does not overwrite the first one
    with torch.no_grad():
        logits = model(
            build_dataset({"name": "seg_folder", "root": str(tmp_path / "data")}, num_classes=3)[0]["image"][None]
        )
    first = result["predictions"][0]
    mask = np.array(Image.open(tmp_path / "out" / first["mask"]))
    assert Image.open(tmp_path / "out" / first["mask"]).mode == "P"
    assert np.array_equal(mask, logits.argmax(1)[0].numpy())
    assert sum(first["class_pixels"].values()) == 32 * 40 and first["size"] == [40, 32]
    overlay = Image.open(tmp_path / "out" / first["overlay"])
    assert overlay.size == (40, 32) and overlay.mode == "RGB"
    with pytest.raises(ConfigError, match="Unknown segmentation predict option"):
        task.predict_files(model, inputs, tmp_path / "out", {"topk": 3})
    with pytest.raises(DataError, match="does not exist"):
        task.predict_files(model, [tmp_path / "nope.png"], tmp_path / "out", {})


def test_validation_metrics_samples_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task, model = _task_and_model(tmp_path)
    dataset = task.build_dataset("val")
    ctx = StepContext(model, model, torch.device("cpu"))
    task.reset_metrics()
    with torch.no_grad():
        task.validation_step(task.collate([dataset[0], dataset[1]]), ctx)
        task.validation_step(task.collate([dataset[2]]), ctx)
    metrics = task.compute_metrics()
    assert set(metrics) == {"val/mIoU", "val/pixel_acc", "val/mean_acc", "val/loss"}
    assert 0 <= metrics["val/pixel_acc"] <= 1
    task.on_validation_end(ctx, dataset, tmp_path / "run", 3)
    grid = Image.open(tmp_path / "run" / "samples" / "epoch_003.png")
    assert grid.width > 3 * 40 and grid.height > 2 * 32  # two rows of image | target | prediction
    assert "per-class IoU (epoch 3)" in capsys.readouterr().out
    extras = task.summary_extras()
    assert [row["class"] for row in extras["per_class_iou"]] == ["bg", "red", "blue"]
    assert extras["val/IoU/bg"] == extras["per_class_iou"][0]["iou"]
    json.dumps(extras, allow_nan=False)  # NaN (class never seen) is written as null
