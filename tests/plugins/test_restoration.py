"""The visionkit-restoration plugin: a whole new task found through its entry point, run through the core."""

from __future__ import annotations

import inspect
import io
import json
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

import visionkit
from tests.conftest import merged, run_tool
from visionkit.config import task_config_path
from visionkit.data.facts import DataFacts
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.metrics import Evaluator
from visionkit.errors import ConfigError
from visionkit.registry import TASKS

# A few updates on 16x16 images with a narrow model: seconds, not minutes.
FAST = [
    "data.image_size=16",
    "data.train.size=48",
    "data.val.size=12",
    "data.batch_size=16",
    "model.width=8",
    "model.depth=3",
    "trainer.epochs=1",
    "trainer.progress=false",
    "trainer.log_every=1",
    "restoration.samples=2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> visionkit.engine.report.RunResult:
    return visionkit.train(None, FAST, task="restore", work_dir=tmp_path_factory.mktemp("restore") / "run")


def test_task_is_found_through_the_entry_point() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="visionkit.plugins")}
    assert eps.get("restoration") == "visionkit_restoration"
    entry = TASKS.entry("restore")
    assert entry.name == "restoration" and "restore" in entry.aliases
    assert entry.origin == "plugin visionkit-restoration"
    config = task_config_path("restore")  # shipped inside the plugin package
    assert config == Path(entry.obj.default_config) and config.parent.parent == Path(inspect.getfile(entry.obj)).parent


def test_task_class_file_is_at_most_120_lines() -> None:
    source = Path(inspect.getsourcefile(TASKS.get("restore")))
    assert len(source.read_text().splitlines()) <= 120


def test_metrics_equal_torchmetrics_functional() -> None:
    task = TASKS.get("restore")(visionkit.load_config(None, task="restore"))
    evaluator = Evaluator(task.build_metrics(DataFacts(channels=3, image_size=16)))
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(6, 3, 16, 16, generator=gen)
    restored = (target + 0.05 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    degraded = (target + 0.2 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    for part in (slice(0, 4), slice(4, 6)):  # two unequal batches
        outputs = {"restored": restored[part], "target": target[part], "degraded": degraded[part]}
        evaluator.update({"loss": torch.tensor(0.0), **outputs}, 4)
    scores, _ = evaluator.compute()
    by_hand = (10 * torch.log10(1 / ((restored - target) ** 2).mean((1, 2, 3)))).mean()
    psnr = peak_signal_noise_ratio(restored, target, data_range=1.0, dim=(1, 2, 3))
    assert scores["val/psnr"] == pytest.approx(float(by_hand), rel=1e-5) == pytest.approx(float(psnr), rel=1e-5)
    psnr_in = peak_signal_noise_ratio(degraded, target, data_range=1.0, dim=(1, 2, 3))
    assert scores["val/psnr_input"] == pytest.approx(float(psnr_in), rel=1e-5)
    ssim = structural_similarity_index_measure(restored, target, data_range=1.0)
    assert scores["val/ssim"] == pytest.approx(float(ssim), rel=1e-5)
    ssim_in = structural_similarity_index_measure(degraded, target, data_range=1.0)
    assert scores["val/ssim_input"] == pytest.approx(float(ssim_in), rel=1e-5)


def test_train_then_evaluate(run) -> None:
    for key in ("val/psnr", "val/psnr_input", "val/ssim", "val/ssim_input", "val/loss"):
        assert key in run.metrics
    ckpt = load_checkpoint(run.best_checkpoint)
    assert ckpt["facts"]["channels"] == 3 and ckpt["facts"]["image_size"] == 16
    assert ckpt["facts"]["extra"] == {"scale": 1}
    assert (run.run_dir / "samples" / "epoch_001.png").is_file()
    scores = visionkit.evaluate(run.best_checkpoint)
    # Validation noise is seeded per image: evaluation sees the very inputs training validated on.
    assert scores["val/psnr"] == pytest.approx(run.best["val/psnr"], rel=1e-5)
    assert scores["val/psnr_input"] == pytest.approx(run.best["val/psnr_input"], rel=1e-6)


def test_predict_writes_restored_images_and_json(run, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    Image.fromarray(rng.integers(0, 255, (12, 20), dtype=np.uint8)).save(tmp_path / "in" / "sub" / "b.png")
    done = run_tool("predict", str(run.best_checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert result["task"] == "restoration" and result["data"]["extra"] == {"scale": 1}
    records = result["predictions"]
    assert [r["restored"] for r in records] == ["restored/a.png", "restored/sub/b.png"]
    assert [r["size"] for r in records] == [[16, 16], [20, 12]] == [r["input_size"] for r in records]
    assert all(r["mean_abs_change"] >= 0 for r in records)
    with Image.open(tmp_path / "out" / "restored" / "sub" / "b.png") as im:
        assert im.size == (20, 12) and im.mode == "RGB"  # a grey file is read as the model's 3 channels


def test_plugin_task_exports_and_predicts_through_onnxruntime(run, tmp_path: Path) -> None:
    from visionkit.deploy.export import export_model

    sidecar = export_model(run.best_checkpoint, "onnx", tmp_path / "x", dynamic_batch=True)
    assert sidecar["task"] == "restoration" and sidecar["check"]["passed"] is True
    assert sidecar["outputs"][0]["shape"] == ["batch", 3, "out_height", "out_width"]
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    exported = visionkit.predict(tmp_path / "x" / "model.onnx", [tmp_path / "a.png"], tmp_path / "o1")
    reference = visionkit.predict(run.best_checkpoint, [tmp_path / "a.png"], tmp_path / "o2")
    assert exported["predictions"][0]["size"] == [20, 12]
    assert exported["predictions"][0]["mean_abs_change"] == pytest.approx(
        reference["predictions"][0]["mean_abs_change"], abs=1e-3
    )


def test_the_plugin_task_is_served_over_http(run, tmp_path: Path) -> None:
    """`visionkit serve` needs nothing of the plugin beyond prediction: records and drawing equal predict's."""
    pytest.importorskip("fastapi", reason="the serve extra is in make test's dev dependencies")
    from fastapi.testclient import TestClient

    from visionkit.deploy.serve import build_app

    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    client = TestClient(build_app(run.best_checkpoint))
    info = client.get("/info").json()
    assert info["task"] == "restoration" and info["predicts"] is True and info["samples"] is False
    served = client.post("/predict", files=[("files", ("a.png", (tmp_path / "a.png").read_bytes(), "image/png"))])
    assert served.status_code == 200, served.text
    reference = visionkit.predict(run.best_checkpoint, [tmp_path / "a.png"], tmp_path / "out")["predictions"][0]
    record = served.json()["predictions"][0]
    assert record["input"] == "a.png" and record["size"] == reference["size"] == [20, 12]
    assert record["mean_abs_change"] == pytest.approx(reference["mean_abs_change"], abs=1e-3)
    drawn = client.post("/predict?draw=1", content=(tmp_path / "a.png").read_bytes())
    assert drawn.status_code == 200
    with Image.open(io.BytesIO(drawn.content)) as picture, Image.open(tmp_path / "out" / "restored" / "a.png") as want:
        assert np.array_equal(np.asarray(picture), np.asarray(want))  # the plugin's own drawing


def test_sr2x_upscales_at_predict_time(tmp_path: Path) -> None:
    over = [*FAST, "restoration.mode=sr2x", "trainer.max_steps=2"]
    result = visionkit.train(None, over, task="restoration", work_dir=tmp_path / "run")
    assert result.metrics["val/psnr_input"] > 0
    Image.fromarray(np.full((8, 10, 3), 128, np.uint8)).save(tmp_path / "small.png")
    out = visionkit.predict(result.best_checkpoint, [tmp_path / "small.png"], tmp_path / "out")
    assert out["predictions"][0]["size"] == [20, 16] and out["predictions"][0]["input_size"] == [10, 8]
    with Image.open(tmp_path / "out" / "restored" / "small.png") as im:
        assert im.size == (20, 16)
    with pytest.raises(ConfigError, match="accepted: denoise, sr2x"):
        visionkit.load_config(None, ["restoration.mode=sr3x"], task="restore")


def test_resume_through_tools_continues_the_run(run, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(run.run_dir, work)
    args = merged("--task", "restore", "--resume", "auto", "--work-dir", str(work), *FAST, "trainer.epochs=2")
    done = run_tool("train", *args)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "epoch 2/2" in done.stdout
    assert load_checkpoint(work / "checkpoints" / "last.pt")["epoch"] == 2
