"""Task-level behaviour: config checks, the shipped configs, data facts, prediction files and validation samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import visionkit
from visionkit import StepContext, load_config
from visionkit.config import CONFIG_ROOT
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.metrics import Evaluator
from visionkit.engine.predictor import Predictor
from visionkit.errors import ConfigError, DataError
from visionkit.registry import TASKS

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
    train = task.build_dataset("train")
    sample = train[0]
    assert sample["image"].shape == (3, 256, 256) and sample["mask"].max() < 3
    folder_facts = task.data_facts(train, task.build_dataset("val"))
    assert folder_facts.num_classes == cfg["data"]["num_classes"] and folder_facts.channels == 3
    if cfg["data"]["class_names"] is None:  # a folder of masks names no classes: no placeholder names either
        assert folder_facts.class_names is None
    ann, images = _coco_files(tmp_path / "c", _annotations())
    overrides = [
        f"data.{s}.{k}={v}"
        for s in ("train", "val")
        for k, v in (("annotations", ann), ("images", images), ("categories", "[dog, cat]"))
    ] + ["data.num_classes=3"]
    cfg = load_config(CONFIG_ROOT / "seg" / "coco.yaml", overrides)
    task = TASKS.get(cfg["task"])(cfg)
    train, val = task.build_dataset("train"), task.build_dataset("val")
    facts = task.data_facts(train, val)
    assert facts.class_names == ["background", "dog", "cat"] and facts.num_classes == 3  # from the annotations
    assert cfg["data"]["class_names"] is None  # nothing written into the config
    assert set(val[0]["mask"].unique().tolist()) == {0, 1, 2, 255}
    with pytest.raises(DataError, match="data.num_classes=3"):
        bad = load_config(CONFIG_ROOT / "seg" / "coco.yaml", overrides[:-1])
        TASKS.get("seg")(bad).build_dataset("train")


def test_named_classes_must_agree_with_num_classes() -> None:
    class Named(torch.utils.data.Dataset):
        class_names = ["background", "cat", "dog"]

    task = TASKS.get("seg")(load_config(None, ["data.class_names=null"], task="seg"))  # data.num_classes: 4
    with pytest.raises(DataError, match=r"data.num_classes is 4 but data.train defines 3 classes"):
        task.data_facts(Named(), None)

    class Generic(torch.utils.data.Dataset):
        class_names = ["class_0", "class_1", "class_2"]

    facts = task.data_facts(Generic(), None)  # placeholder names tell nothing: data.num_classes stands
    assert facts.num_classes == 4 and facts.class_names is None and facts.names[-1] == "class_3"


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
    task.facts = task.data_facts(task.build_dataset("val"), None)
    model = task.build_model(task.facts).eval()
    task.setup(model, torch.device("cpu"))
    return task, model


def test_predict_writes_index_masks_overlays_and_json(tmp_path: Path) -> None:
    task, model = _task_and_model(tmp_path)
    other = tmp_path / "other" / "img00.png"  # a file named like one in the folder (the same file would count once)
    other.parent.mkdir()
    shutil.copy(tmp_path / "data" / "images" / "img00.png", other)
    inputs = [tmp_path / "data" / "images", other]  # a folder and a file
    result = Predictor(task, model).run(inputs, tmp_path / "out", {"alpha": 0.3})
    assert len(result["predictions"]) == 4 and result["data"]["class_names"] == ["bg", "red", "blue"]
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert written == {k: result[k] for k in ("task", "data", "predictions")} and written["task"] == "segmentation"
    names = [p["masks"] for p in result["predictions"]]
    assert len(set(names)) == 4  # the same-named input does not overwrite the first one
    assert names[0] == "masks/img00.png" and result["predictions"][0]["overlays"] == "overlays/img00.png"
    with torch.no_grad():
        logits = model(
            build_dataset({"name": "seg_folder", "root": str(tmp_path / "data")}, num_classes=3)[0]["image"][None]
        )
    first = result["predictions"][0]
    mask = np.array(Image.open(tmp_path / "out" / first["masks"]))
    assert Image.open(tmp_path / "out" / first["masks"]).mode == "P"
    assert np.array_equal(mask, logits.argmax(1)[0].numpy())
    assert sum(first["class_pixels"].values()) == 32 * 40 and first["size"] == [40, 32]
    overlay = Image.open(tmp_path / "out" / first["overlays"])  # scaled to a 512 px short side, legend below
    assert overlay.width == 640 and overlay.height > 512 and overlay.mode == "RGB"
    plain = Predictor(task, model).run([inputs[1]], tmp_path / "plain", {"alpha": 0.3, "legend": False})
    assert Image.open(tmp_path / "plain" / plain["predictions"][0]["overlays"]).size == (40, 32)
    with pytest.raises(ConfigError, match="Unknown predict option 'topk'.*alpha"):
        Predictor(task, model).run(inputs, tmp_path / "out", {"topk": 3})
    with pytest.raises(DataError, match="does not exist"):
        Predictor(task, model).run([tmp_path / "nope.png"], tmp_path / "out", {})


def test_predict_keeps_same_named_images_of_different_folders_and_sizes(tmp_path: Path) -> None:
    task, model = _task_and_model(tmp_path)
    for folder, size in (("a", (32, 40)), ("b", (24, 48))):
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(tmp_path / "in" / folder / "x.png")
    Image.fromarray(np.full((32, 40), 200, np.uint8)).save(tmp_path / "in" / "a" / "grey.png")  # a grey image
    result = Predictor(task, model).run([tmp_path / "in"], tmp_path / "out", {})
    records = {r["masks"]: r for r in result["predictions"]}
    assert sorted(records) == ["masks/a/grey.png", "masks/a/x.png", "masks/b/x.png"]
    for name, size in (("masks/a/x.png", (40, 32)), ("masks/b/x.png", (48, 24)), ("masks/a/grey.png", (40, 32))):
        assert Image.open(tmp_path / "out" / name).size == size and records[name]["size"] == list(size)
        assert (tmp_path / "out" / records[name]["overlays"]).is_file()
    with pytest.raises(ConfigError, match="alpha must lie in"):
        Predictor(task, model).run([tmp_path / "in"], tmp_path / "out2", {"alpha": 2})


def test_validation_metrics_samples_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task, model = _task_and_model(tmp_path)
    dataset = task.build_dataset("val")
    ctx = StepContext(model, model, torch.device("cpu"))
    evaluator = Evaluator(task.build_metrics(task.facts))
    batches = [task.collate([dataset[0], dataset[1]]), task.collate([dataset[2]])]
    evaluator.reset()
    with torch.no_grad():
        for batch in batches:
            outputs = task.validation_step(batch, ctx)
            assert set(outputs) == {"loss", "pred", "target"} and outputs["pred"].shape == batch["mask"].shape
            evaluator.update(outputs, task.batch_size(batch))
        per_sample = [
            F.cross_entropy(model(dataset[i]["image"][None]), dataset[i]["mask"][None], ignore_index=255)
            for i in range(3)
        ]
    metrics, extras = evaluator.compute()
    assert {"val/mIoU", "val/pixel_acc", "val/mean_acc", "val/loss", "val/IoU/bg"} <= set(metrics)
    assert 0 <= metrics["val/pixel_acc"] <= 1
    assert metrics["val/loss"] == pytest.approx(float(torch.stack(per_sample).mean()), rel=1e-5)  # per sample
    task.on_validation_end(ctx, dataset, tmp_path / "run", 3, {**metrics, **extras})
    grid = Image.open(tmp_path / "run" / "samples" / "epoch_003.png")
    assert grid.width > 3 * 40 and grid.height > 2 * 32  # two rows of image | target | prediction
    assert "per-class IoU (epoch 3)" in capsys.readouterr().out
    assert [row["class"] for row in extras["per_class_iou"]] == ["bg", "red", "blue"]
    if extras["per_class_iou"][0]["iou"] is not None:
        assert metrics["val/IoU/bg"] == pytest.approx(extras["per_class_iou"][0]["iou"])
    json.dumps(extras, allow_nan=False)  # NaN (class never seen) is written as null


def test_coco_class_names_travel_in_the_checkpoint_facts(tmp_path: Path) -> None:
    ann, images = _coco_files(tmp_path / "c", _annotations(), size=(24, 32))
    split = {"name": "coco", "annotations": str(ann), "images": str(images), "categories": ["dog", "cat"]}
    cfg = {
        "task": "seg",
        "model": SMALL_UNET,
        "data": {"num_classes": 3, "train": split, "val": split, "batch_size": 2, "num_workers": 0},
        "segmentation": {"num_samples": 1},
        "trainer": {"max_steps": 1, "epochs": 1, "progress": False},
    }
    run = visionkit.train(cfg, work_dir=tmp_path / "run")
    ckpt = load_checkpoint(run.best_checkpoint or run.run_dir / "checkpoints" / "last.pt")
    assert ckpt["facts"]["class_names"] == ["background", "dog", "cat"] and ckpt["facts"]["num_classes"] == 3
    assert ckpt["config"]["data"].get("class_names") is None  # not written into the config
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert [row["class"] for row in summary["per_class_iou"]] == ["background", "dog", "cat"]
    out = visionkit.predict(run.run_dir / "checkpoints" / "last.pt", [images], tmp_path / "pred")
    assert out["data"]["class_names"] == ["background", "dog", "cat"]
    assert set(out["predictions"][0]["class_pixels"]) <= {"background", "dog", "cat"}
