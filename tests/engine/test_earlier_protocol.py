"""A task written against the earlier task protocol trains, evaluates, resumes and predicts, with one warning."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionkit
from visionkit import plugins
from visionkit.engine.protocol import build_task, earlier_protocol
from visionkit.errors import PluginError, VisionkitDeprecationWarning
from visionkit.registry import TASKS

ROOT = Path(__file__).resolve().parents[2]
RUN = ["trainer.epochs=2", "trainer.num_threads=1", "trainer.progress=false", "data.batch_size=16"]
RUN += ["data.num_workers=0", "optimizer.lr=0.01", "scheduler.name=constant"]


@pytest.fixture(scope="module")
def earlier() -> Iterator[type]:
    """The earlier-protocol task registered for this module's tests (the registries put back afterwards)."""
    saved = plugins.snapshot()
    from tests.engine import earlier_task

    yield earlier_task.DenoiseTask
    plugins.restore(saved)


def _noisy_psnr() -> float:
    from tests.engine.earlier_task import NoisyDigits

    val = NoisyDigits("val", 64)
    return 10 * math.log10(1 / float(((val.noisy - val.clean) ** 2).mean()))


def test_earlier_task_trains_evaluates_resumes_and_predicts(earlier: type, tmp_path: Path) -> None:
    assert earlier_protocol(earlier) == [
        "reset_metrics", "compute_metrics", "summary_extras", "predict_files", "build_model() without facts",
        "model_defaults() without facts", "on_validation_end() without results",
    ]  # fmt: skip
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = visionkit.train({"task": "earlier_denoise"}, RUN, work_dir=run)
        metrics = visionkit.evaluate(result.best_checkpoint, device="cpu")
        resumed = visionkit.train(None, ["trainer.epochs=3"], resume="auto", work_dir=run)
        image = tmp_path / "in" / "noisy.png"
        image.parent.mkdir()
        from tests.engine.earlier_task import NoisyDigits

        Image.fromarray((NoisyDigits("val", 1).noisy[0, 0].numpy() * 255).astype(np.uint8)).save(image)
        predicted = visionkit.predict(result.best_checkpoint, [image], tmp_path / "out")
    told = [w for w in caught if "earlier task protocol" in str(w.message)]
    assert len(told) == 1 and "plugin API 2.0" in str(told[0].message) and "visionkit.Metric" in str(told[0].message)
    assert told[0].category is VisionkitDeprecationWarning
    # Trained: its own metric state scored every validation, and it learned to denoise.
    assert result.best["val/psnr"] > _noisy_psnr() + 1.0
    assert "val/loss" in result.best and result.summary["images_scored"] == [64]
    assert (run / "validated_epochs.txt").read_text().split() == ["1", "2", "3"]  # two epochs, then the resume's
    assert metrics["val/psnr"] == pytest.approx(result.best["val/psnr"], abs=1e-6)  # evaluated as trained
    assert resumed.summary["steps"] == 3 * result.summary["steps"] // 2 and resumed.summary["epochs"] == 3
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())  # its own predict_files wrote it
    assert predicted["predictions"] == records and records[0]["input"] == str(image)
    assert (tmp_path / "out" / "noisy.png").is_file()


def test_earlier_task_from_the_command_line_warns_once(earlier: type, tmp_path: Path) -> None:
    config = tmp_path / "denoise.yaml"
    config.write_text("task: earlier_denoise\n")
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--plugin", "tests.engine.earlier_task"]
    cmd += ["--config", str(config), "--work-dir", str(tmp_path / "run"), *RUN[1:], "trainer.epochs=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "earlier task protocol" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: Task 'earlier_denoise'"), proc.stderr


class NoTrainingStep(visionkit.Task):
    name = "vk_no_training_step"


class NoValidationStep(visionkit.Task):
    name = "vk_no_validation_step"

    def training_step(self, batch: object, ctx: visionkit.StepContext) -> dict:
        raise AssertionError("not reached")


class NotATask:
    name = "vk_not_a_task"

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (NoTrainingStep, "does not implement training_step"),
        (NoValidationStep, "does not implement validation_step.*but the config has data.val"),
        (NotATask, "is not a subclass of visionkit.Task"),
    ],
)
def test_a_protocol_the_core_cannot_use_is_a_plugin_error(cls: type, message: str) -> None:
    saved = plugins.snapshot()
    try:
        TASKS.register(cls.name, cls)
        cfg = visionkit.config.load_config({"task": cls.name, "model": {"name": "mlp"}, "data": {"val": "x"}})
        with pytest.raises(PluginError, match=message):
            build_task(cfg)
    finally:
        plugins.restore(saved)


def test_an_adapted_task_pickles_for_spawned_loader_workers(earlier: type) -> None:
    import pickle

    task = build_task(visionkit.load_config({"task": "earlier_denoise"}))
    again = pickle.loads(pickle.dumps(task.collate))  # what a DataLoader hands a spawned worker
    assert type(again.__self__) is type(task) and isinstance(again.__self__, earlier)
    assert again.__self__.cfg == task.cfg
