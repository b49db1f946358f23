"""A few training steps, then evaluation and prediction, through tools/ and through the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionkit
from tests.conftest import merged, run_tool
from visionkit.cli import train_main
from visionkit.config import CONFIG_ROOT

from .conftest import write_folder_dataset

TINY = [
    "data.train.num_images=8",
    "data.val.num_images=4",
    "data.train.image_size=32",
    "data.val.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.log_every=1",
    "trainer.progress=false",
    "model.encoder=test_efficientnet",
    "model.decoder_channels=[16,16,8,8,8]",
    "segmentation.num_samples=2",
]


def test_train_eval_predict_through_tools(tmp_path: Path) -> None:
    env = {"VISIONKIT_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    proc = run_tool("train", "--task", "seg", "--work-dir", str(run_dir), *TINY, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per-class IoU" in proc.stdout and "val/mIoU" in proc.stdout
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["epoch_001.png"]  # after the first epoch
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["monitor"] == "val/mIoU"
    assert [r["class"] for r in summary["per_class_iou"]] == ["background", "circle", "square", "triangle"]

    proc = run_tool("eval", str(run_dir / "checkpoints" / "best.pt"), "--out", str(tmp_path / "eval.json"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["val/mIoU"] == pytest.approx(summary["best"]["val/mIoU"], abs=1e-6)
    assert "val/IoU/circle" in metrics

    images = next((tmp_path / "cache").glob("seg_shapes_*/val_4/images"))
    proc = run_tool(
        "predict",
        str(run_dir / "checkpoints" / "best.pt"),
        str(images),
        "--out",
        str(tmp_path / "pred"),
        "--option",
        "alpha=0.4",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(result["predictions"]) == 4
    mask = np.array(Image.open(tmp_path / "pred" / result["predictions"][0]["masks"]))
    assert mask.shape == (32, 32) and mask.max() < 4
    assert (tmp_path / "pred" / result["predictions"][0]["overlays"]).is_file()


def test_cli_reports_a_data_error_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONKIT_CACHE", str(tmp_path / "cache"))
    status = train_main(
        ["--task", "seg", "--work-dir", str(tmp_path / "bad"), *TINY, "data.num_classes=3", "data.class_names=null"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "data.num_classes=4" in err and "Traceback" not in err


def test_train_evaluate_predict_through_the_api(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path / "train", count=6, num_classes=3, seed=1)
    write_folder_dataset(tmp_path / "val", count=3, num_classes=3, seed=2)
    overrides = [
        f"data.train.root={tmp_path / 'train'}",
        f"data.val.root={tmp_path / 'val'}",
        "data.batch_size=3",
        "data.num_workers=0",
        "data.train_transforms=[{name: HorizontalFlip, p: 0.5}]",
        "trainer.max_steps=4",
        "trainer.epochs=2",
        "trainer.progress=false",
        "model.encoder=test_efficientnet",
        "model.decoder_channels=[16,16,8,8,8]",
        "segmentation.num_samples=1",
    ]
    result = visionkit.train(CONFIG_ROOT / "seg" / "folder.yaml", overrides, work_dir=tmp_path / "run")
    assert set(result.metrics) >= {"val/mIoU", "val/pixel_acc", "val/loss"}
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert len(list((result.run_dir / "samples").glob("epoch_*.png"))) == 2  # one per validation (2 epochs)
    metrics = visionkit.evaluate(result.best_checkpoint)
    assert metrics["val/mIoU"] == pytest.approx(result.best["val/mIoU"], abs=1e-6)
    out = visionkit.predict(result.best_checkpoint, [tmp_path / "val" / "images"], tmp_path / "pred")
    assert [Path(p["input"]).name for p in out["predictions"]] == ["img00.png", "img01.jpg", "img02.png"]
    assert all((tmp_path / "pred" / p["masks"]).is_file() for p in out["predictions"])


@pytest.mark.cuda
def test_mixed_precision_training_on_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONKIT_CACHE", str(tmp_path / "cache"))
    overrides = merged(*TINY, "trainer.device=cuda", "trainer.precision=bf16-mixed", "trainer.max_steps=4")
    result = visionkit.train(task="seg", overrides=overrides, work_dir=tmp_path / "run")
    assert result.summary["device"].startswith("cuda") and result.summary["steps"] == 4
    assert 0 <= result.metrics["val/mIoU"] <= 1 and result.metrics["val/loss"] == result.metrics["val/loss"]
