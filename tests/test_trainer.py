"""Trainer: outputs, exact resume, precision paths, multiple optimizers, guards, distributed runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import visionkit
from tests.conftest import ROOT, TINY_CLS, TINY_DATA, merged
from visionkit import OptimizerGroup, StepContext
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.trainer import TrainingError
from visionkit.errors import ConfigError
from visionkit.registry import MODELS, TASKS
from visionkit.tasks.classification.task import ClassificationTask

# Small training split (about 180 images), 2 loader workers, shuffling, random augmentation, EMA,
# gradient accumulation and a warmup+cosine schedule: everything a resume has to reproduce.
RESUME_CFG = [
    "model.width=8",
    "model.depth=2",
    "data.image_size=8",
    "data.batch_size=32",
    "data.num_workers=2",
    "data.train.val_fraction=0.9",
    "trainer.epochs=4",
    "trainer.accumulate=2",
    "trainer.ema=0.9",
    "trainer.log_every=1",
    "scheduler.warmup_steps=2",
    "model.dropout=0.3",
    "data.train_transforms=[{name: Affine, translate_px: [-1, 1], rotate: [-15, 15], p: 1.0}]",
]


def test_run_outputs(tmp_path: Path) -> None:
    result = visionkit.train(None, merged(*TINY_CLS, "trainer.epochs=2"), task="cls", work_dir=tmp_path / "run")
    run = result.run_dir
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "confusion_matrix.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["final"]) >= {"val/top1", "val/top5"}
    assert summary["best"]["val/top1"] == max(r["val/top1"] for r in _records(run) if "val/top1" in r)
    assert Path(summary["best_checkpoint"]).is_file() and summary["wall_time_s"] > 0
    assert len(summary["per_class_accuracy"]) == 10
    steps = [r for r in _records(run) if "train/loss" in r and "images_per_s" in r]
    assert steps and all(r["lr"] >= 0 for r in steps) and max(r["lr"] for r in steps) > 0
    assert result.metrics["val/top1"] > 0.3  # two tiny epochs already learn


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("workers", [2, 0])
def test_resume_mid_epoch_gives_identical_weights(tmp_path: Path, workers: int) -> None:
    cfg = merged(*RESUME_CFG, f"data.num_workers={workers}")
    full = visionkit.train(None, [*cfg, "trainer.max_steps=8"], task="cls", work_dir=tmp_path / "full")
    half = visionkit.train(None, [*cfg, "trainer.max_steps=4"], task="cls", work_dir=tmp_path / "half")
    mid = load_checkpoint(half.run_dir / "checkpoints" / "last.pt")
    assert mid["step"] == 4 and 0 < mid["batch_in_epoch"] < 6  # stopped inside epoch 2 (6 batches per epoch)
    resumed = visionkit.train(None, ["trainer.max_steps=8"], resume="auto", work_dir=tmp_path / "half")
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"
    assert a["optimizers"]["main"]["state"][0]["exp_avg"].equal(b["optimizers"]["main"]["state"][0]["exp_avg"])


def test_resume_refuses_changes_it_cannot_honour(tmp_path: Path) -> None:
    visionkit.train(None, [*TINY_CLS, "trainer.max_steps=2"], task="cls", work_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"cannot change optimizer.lr"):
        visionkit.train(None, ["optimizer.lr=0.1"], resume=tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match=r"--task seg does not match the checkpoint .* 'classification' run"):
        visionkit.train(None, [], task="seg", resume=tmp_path / "run")
    longer = visionkit.train(None, ["trainer.max_steps=4"], task="cls", resume=tmp_path / "run")
    assert longer.summary["steps"] == 4


@MODELS.register("dtype_probe", task="classification", override=True)
class DtypeProbe(nn.Module):
    """Records the dtype its convolution computes in, to prove autocast was active."""

    seen: list[torch.dtype] = []

    def __init__(self, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        DtypeProbe.seen.append(y.dtype)
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("fp16-mixed", torch.float16), ("fp32", torch.float32)]
)
def test_precision_paths_on_cpu(tmp_path: Path, precision: str, dtype: torch.dtype) -> None:
    DtypeProbe.seen.clear()
    result = visionkit.train(
        None,
        [
            *TINY_DATA,
            "model.name=dtype_probe",
            f"trainer.precision={precision}",
            "trainer.max_steps=3",
            "trainer.clip_grad=1.0",
        ],
        task="cls",
        work_dir=tmp_path,
    )
    assert DtypeProbe.seen and all(d == dtype for d in DtypeProbe.seen)
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert bool(ckpt["scaler"]) == (precision == "fp16-mixed")  # a scaler only for fp16


@MODELS.register("nan_model", task="classification", override=True)
class NanModel(nn.Module):
    """Always produces NaN logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean((1, 2, 3))[:, None]) * float("nan")


def test_non_finite_loss_skips_then_stops_with_advice(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"NaN/inf for 3 updates.*lower optimizer.lr"):
        visionkit.train(
            None, [*TINY_DATA, "model.name=nan_model", "trainer.max_bad_steps=3"], task="cls", work_dir=tmp_path
        )


def test_early_stopping(tmp_path: Path) -> None:
    result = visionkit.train(
        None,
        merged(
            *TINY_CLS,
            "trainer.epochs=6",
            "trainer.early_stop_patience=2",
            "optimizer.lr=1e-12",
            "scheduler.name=constant",
            "data.train.val_fraction=0.9",
        ),
        task="cls",
        work_dir=tmp_path,
    )
    assert result.summary["epochs"] == 3  # best at epoch 1, two rounds without gain


@TASKS.register("two_optimizers", override=True)
class TwoOptimizerTask(ClassificationTask):
    """Classification split into 'features' and 'head' optimizers, the head stepped every 2nd update."""

    name = "two_optimizers"
    calls: list[tuple[str, int, bool]] = []

    def optimizer_groups(self, model: nn.Module) -> dict[str, OptimizerGroup]:
        return {
            "features": OptimizerGroup(model.features.parameters(), {"lr": 0.01}),
            "head": OptimizerGroup(model.head.parameters(), {"lr": 0.05}, every=2),
        }

    def training_step(self, batch, ctx: StepContext):  # noqa: ANN001, ANN201
        images, labels = batch
        other = ctx.module.head if ctx.optimizer == "features" else ctx.module.features
        TwoOptimizerTask.calls.append((ctx.optimizer, ctx.step, any(p.requires_grad for p in other.parameters())))
        return {"loss": self.loss_fn(ctx.model(images), labels)}


def test_multiple_optimizers_step_only_their_parameters(tmp_path: Path) -> None:
    TwoOptimizerTask.calls.clear()
    overrides = [*TINY_CLS, "trainer.max_steps=3", "model.name=small_cnn"]
    cfg = visionkit.load_config(None, overrides, task="cls")
    cfg["task"] = "two_optimizers"
    result = visionkit.train(cfg, work_dir=tmp_path)
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert set(ckpt["optimizers"]) == {"features", "head"}
    assert [c[:2] for c in TwoOptimizerTask.calls] == [
        ("features", 0),
        ("head", 0),
        ("features", 1),
        ("features", 2),
        ("head", 2),
    ]
    assert not any(c[2] for c in TwoOptimizerTask.calls)  # the other group's parameters were frozen
    assert ckpt["optimizers"]["head"]["param_groups"][0]["lr"] <= 0.05


def test_trains_with_installed_example_plugin_through_tools(tmp_path: Path) -> None:
    from tests.conftest import run_tool

    proc = run_tool(
        "train",
        "--task",
        "cls",
        "--work-dir",
        str(tmp_path / "run"),
        *merged(*TINY_DATA, "model.name=tiny_resnet", "data.train.name=bars", "data.val.name=bars", "trainer.epochs=2"),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"]["val/top1"] > 0.6  # three classes: better than chance


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun is installed with torch"
)
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        merged(
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "tools" / "train.py"),
            "--task",
            "cls",
            "--work-dir",
            str(tmp_path / "run"),
            *TINY_CLS,
            "trainer.epochs=2",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2
    batches = [r["batches"] for r in summary["ranks"]]
    assert [r["rank"] for r in summary["ranks"]] == [0, 1] and batches[0] == batches[1] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one set of outputs
    assert proc.stdout.count("done in") == 1  # only rank 0 prints
    records = _records(tmp_path / "run")
    assert len([r for r in records if "val/top1" in r]) == 2  # one validation record per epoch, not per rank


def test_stale_temporaries_are_cleaned_and_resume_auto_with_nothing_says_so(tmp_path, capsys) -> None:
    import visionkit
    from tests.conftest import TINY_CLS

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ptabc123.tmp").write_bytes(b"half a checkpoint")  # a save killed mid-write
    visionkit.train(None, [*TINY_CLS, "trainer.max_steps=1", "trainer.progress=false"], task="cls", work_dir=run,
                    resume="auto")  # fmt: skip
    assert "no checkpoints/last.pt to resume; starting a new run" in capsys.readouterr().out
    assert not list((run / "checkpoints").glob("*.tmp")) and (run / "checkpoints" / "last.pt").is_file()


def test_a_work_dir_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    for bad in (tmp_path / "a_file", tmp_path / "a_file" / "run"):
        with pytest.raises(ConfigError, match=f"The run folder '{bad}' cannot be written: Not a directory"):
            visionkit.train(None, [*TINY_CLS, "trainer.max_steps=1"], task="cls", work_dir=bad)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), "--task", "cls", "--work-dir", "x" * 300],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "cannot be written: File name too long" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
