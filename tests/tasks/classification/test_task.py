"""Classification on the core services: data facts, metrics in summary.json, prediction through the Predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import visionkit
from tests.conftest import TINY_CLS, TINY_DATA, merged
from visionkit.data import DataWarning
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.errors import ConfigError
from visionkit.registry import DATASETS

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> visionkit.engine.report.RunResult:
    """A one-epoch run whose image size is left to the data (digits: 8x8 grey)."""
    overrides = merged(*TINY_CLS, "data.image_size=null", "trainer.progress=false")
    return visionkit.train(None, overrides, task="cls", work_dir=tmp_path_factory.mktemp("cls") / "run")


def _digit(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((load_digits().images[index] * 255 / 16).astype(np.uint8), "L").save(path)


def test_facts_travel_with_the_checkpoint_not_the_config(run) -> None:
    ckpt = load_checkpoint(run.best_checkpoint)
    facts = ckpt["facts"]
    assert facts["class_names"] == DIGITS and facts["num_classes"] == 10
    assert facts["channels"] == 1 and facts["image_size"] == 8  # filled in from the data
    assert facts["mean"] == [0.5] and facts["std"] == [0.5]
    data = ckpt["config"]["data"]
    assert all(data.get(k) is None for k in ("num_classes", "class_names", "channels", "image_size"))
    saved = visionkit.load_config(run.run_dir / "config.yaml")
    assert saved["data"]["num_classes"] is None and saved["data"]["image_size"] is None
    task, _, _ = visionkit.load_model(run.best_checkpoint)
    assert task.facts.names == DIGITS and task.facts.image_size == 8


def test_summary_has_per_class_accuracy_and_confusion_matrix(run) -> None:
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["data"]["class_names"] == DIGITS
    confusion = np.array(summary["confusion_matrix"])
    val = DATASETS.build({"name": "digits"}, task="classification", split="val")
    assert confusion.shape == (10, 10) and confusion.sum() == len(val)
    assert confusion.sum(1).tolist() == np.bincount(val.labels, minlength=10).tolist()
    assert summary["final"]["val/top1"] == pytest.approx(np.trace(confusion) / confusion.sum())
    per_class = summary["per_class_accuracy"]
    assert list(per_class) == DIGITS
    assert [per_class[n] for n in DIGITS] == pytest.approx(list(np.diag(confusion) / confusion.sum(1)))
    assert set(summary["final"]) == {"val/top1", "val/top5", "val/loss"}
    assert (run.run_dir / "confusion_matrix.png").stat().st_size > 1000


def test_per_class_accuracy_is_null_for_a_class_without_val_samples(tmp_path: Path) -> None:
    for split, classes in (("train", ("cat", "dog", "owl")), ("val", ("cat", "dog"))):
        for c, value in zip(classes, (20, 130, 240)):
            for i in range(4):
                Image.new("L", (8, 8), value).save(_folder(tmp_path / split / c) / f"{i}.png")
        if split == "val":
            (tmp_path / split / "owl").mkdir()  # the class exists, without images
    with pytest.warns(DataWarning, match="data.val: no images for 1 of 3 classes: 'owl'"):
        result = visionkit.train(
            None,
            [
                *TINY_CLS,
                f"data.train={{name: image_folder, root: {tmp_path / 'train'}}}",
                f"data.val={{name: image_folder, root: {tmp_path / 'val'}}}",
                "trainer.progress=false",
            ],
            task="cls",
            work_dir=tmp_path / "run",
        )
    per_class = result.summary["per_class_accuracy"]
    assert list(per_class) == ["cat", "dog", "owl"] and per_class["owl"] is None
    assert all(isinstance(per_class[c], float) for c in ("cat", "dog"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["per_class_accuracy"]["owl"] is None and summary["final"]["val/top5"] == 1.0  # k capped at 3


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_predict_same_names_in_subfolders(run, tmp_path: Path) -> None:
    _digit(tmp_path / "in" / "a" / "x.png", 1700)
    _digit(tmp_path / "in" / "b" / "x.png", 1701)
    out = visionkit.predict(run.best_checkpoint, [tmp_path / "in"], tmp_path / "out", topk=20)
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    records = written["predictions"]
    assert [r["input"] for r in records] == [str(tmp_path / "in" / f / "x.png") for f in ("a", "b")]
    assert all(set(r) == {"input", "top"} and len(r["top"]) == 10 for r in records)  # topk capped at 10 classes
    assert all(r["top"][0]["name"] == DIGITS[r["top"][0]["label"]] for r in records)
    assert written["data"]["image_size"] == 8 and out["predictions"] == records
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.json", "predictions.png"]
    default = visionkit.predict(run.best_checkpoint, [tmp_path / "in" / "a" / "x.png"], tmp_path / "out2")
    assert len(default["predictions"][0]["top"]) == 5  # topk defaults to 5


def test_unknown_or_bad_predict_options_are_rejected(run, tmp_path: Path) -> None:
    _digit(tmp_path / "x.png", 1700)
    with pytest.raises(ConfigError, match="topkk.*Did you mean 'topk'.*topk \\(default 5\\)"):
        visionkit.predict(run.best_checkpoint, [tmp_path / "x.png"], tmp_path / "out", topkk=2)
    with pytest.raises(ConfigError, match="topk must be at least 1"):
        visionkit.predict(run.best_checkpoint, [tmp_path / "x.png"], tmp_path / "out", topk=0)


def test_declared_image_size_resizes_for_training_and_prediction(tmp_path: Path) -> None:
    overrides = merged(*TINY_DATA, "data.image_size=12", "model.name=mlp", "model.hidden=16", "trainer.progress=false")
    result = visionkit.train(None, overrides, task="cls", work_dir=tmp_path / "run")
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["facts"]["image_size"] == 12 and ckpt["config"]["data"]["image_size"] == 12
    assert ckpt["model"]["net.1.weight"].shape[1] == 12 * 12  # the MLP was built for the resized images
    _digit(tmp_path / "x.png", 1700)  # 8x8 input: resized to 12x12 before the model
    out = visionkit.predict(result.best_checkpoint, [tmp_path / "x.png"], tmp_path / "out", topk=1)
    assert len(out["predictions"]) == 1 and len(out["predictions"][0]["top"]) == 1
