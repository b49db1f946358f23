"""Runs sized for the machine: warm-up longer than the run and upscaled images are warned about (dry run and
training), and training prints an estimate of the whole run's time once it has timed a few updates (issue 21)."""

from __future__ import annotations

import re
from pathlib import Path

import visionkit
from tests.conftest import ROOT, TINY_CLS, merged, run_tool
from tests.tasks.detection.helpers import write_image
from visionkit.engine.sizing import RunClock, duration, nearest_multiple, sizing_warnings


def _small_yolo_set(root: Path, count: int = 6) -> Path:
    """A YOLO-layout set of `count` 64x48 images with one box each."""
    for split in ("train", "val"):
        for i in range(count):
            write_image(root / "images" / split / f"{i}.png", 64, 48)
            label = root / "labels" / split / f"{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [thing]\n")
    return root / "data.yaml"


def test_the_yolo_format_config_on_small_images_warns_about_warmup_and_upscaling(tmp_path: Path) -> None:
    data_yaml = _small_yolo_set(tmp_path / "set")
    config = ROOT / "configs" / "det" / "yolo_txt_format.yaml"
    overrides = [f"data.train.data_yaml={data_yaml}", f"data.val.data_yaml={data_yaml}", "data.num_workers=0",
                 "model.backbone=tiny", "model.fpn_channels=16"]  # fmt: skip
    report = visionkit.dry_run(config, overrides)
    warmup, upscale = report["sizing"]["warnings"]
    assert "scheduler.warmup_steps is 500 but the run has 50 updates" in warmup  # 1 update/epoch x 50 epochs
    assert "data.image_size is 640" in upscale and "longest side is 64 px" in upscale and "10.0x" in upscale
    assert "data.image_size=64" in upscale
    assert report["sizing"]["estimate_s"] > 0
    proc = run_tool("train", "--config", str(config), *overrides, "trainer.max_steps=1", "--work-dir",
                    str(tmp_path / "run"), env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: scheduler.warmup_steps is 500 but the run has 1 updates" in proc.stderr
    assert "warning: data.image_size is 640" in proc.stderr


def test_no_warning_for_a_run_sized_right() -> None:
    cfg = {"scheduler": {"warmup_steps": 10}, "data": {"image_size": 96}}
    assert sizing_warnings(cfg, 200, None) == []


def test_clock_and_durations() -> None:
    clock = RunClock()
    lines = [clock.tick(k, k, 100) for k in range(1, 10)]
    assert [x is not None for x in lines] == [False] * 5 + [True] + [False] * 3
    assert duration(7530) == "2 h 05 min" and duration(450) == "7 min 30 s" and duration(42.2) == "42 s"
    assert duration(0.3) == "under 1 s"
    assert nearest_multiple(64) == 64 and nearest_multiple(65) == 96 and nearest_multiple(10) == 32


def test_the_estimate_the_epoch_line_and_plain_progress_without_a_terminal(tmp_path: Path) -> None:
    proc = run_tool("train", "--task", "cls", *merged(*TINY_CLS, "trainer.epochs=2"), "--work-dir", str(tmp_path),
                    env={"VISIONKIT_PROGRESS_SECONDS": "0"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("estimate:")]  # printed once
    assert "s per update over 5 updates; the " in line and "validation passes not included" in line
    first, last = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert re.fullmatch(
        r"epoch 1/2  step \d+  loss [\d.]+  val/top1 [\d.]+ \(best [\d.]+\)  val/top5 [\d.]+  val/loss [\d.]+  "
        r"train [\d.]+s  val [\d.]+s  ETA .+",
        first,
    ), first
    assert "ETA" not in last  # nothing left
    progress = [line for line in proc.stdout.splitlines() if line.startswith("progress: ")]
    assert len(progress) >= 45 and re.match(r"progress: epoch 1/2 batch 1/\d+  step \d+  [\d.]+ batches/s", progress[0])
