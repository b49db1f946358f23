"""`tools/train.py --dry-run`: one training and one validation batch, summaries printed, nothing written;
shape and channel mismatches are reported as which layer expected what and got what, with the key to change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import TINY_CLS, run_tool
from visionkit.cli import train_main
from visionkit.engine.dry_run import dry_run
from visionkit.errors import ConfigError
from visionkit.registry import MODELS

# Each task's default config. Detection's default generates 2,000 + 200 shapes images into a cold cache (~25 s on
# 2 busy cores; the dry run itself takes ~5 s once they exist), so the test asks for fewer images of the same kind;
# generation's validation batch samples 64 images with 25 denoising steps, cut to 4 here.
DEFAULT_OVERRIDES = {
    "cls": [],
    "seg": [],
    "det": [f"data.{s}.num_train=48" for s in ("train", "val")] + [f"data.{s}.num_val=16" for s in ("train", "val")],
    "gen": ["generation.eval_steps=4"],
}
# What one training batch of each default config must show (hand-derived from the configs and datasets).
EXPECTED = {
    "cls": [r"batch\[0\]: \[64, 1, 8, 8\] float32 values -1\.\.1", r"batch\[1\]: \[64\] int64 values 0\.\.9"],
    "seg": [r"batch\.image: \[16, 3, 64, 64\] float32", r"batch\.mask: \[16, 64, 64\] int64 values 0\.\.3"],
    "det": [r"batch\[0\]: \[16, 3, 96, 96\] float32", r"batch\[1\]\[\*\]\.boxes: 16 items.* per item \d+-\d+"],
    "gen": [r"batch\[0\]: \[64, 1, 16, 16\] float32 values -1\.\.1", r"batch\[1\]: \[64\] int64"],
}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("task", list(DEFAULT_OVERRIDES))
def test_dry_run_of_each_default_config_prints_summaries_and_writes_nothing(
    task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_main(["--task", task, "--dry-run", "--work-dir", "run", *DEFAULT_OVERRIDES[task]])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert list(tmp_path.iterdir()) == [], "a dry run must write nothing (no run folder, no runs/)"
    assert "dry run ok: nothing written" in out.out
    assert re.search(r"parameters: [\d,]+ total, [\d,]+ trainable", out.out)
    assert re.search(r"\[main\] loss [\d.]+ .*grad norm [\d.]+", out.out)
    assert "== one validation batch" in out.out and "group 0:" in out.out
    for pattern in EXPECTED[task]:
        assert re.search(pattern, out.out), (pattern, out.out)


def test_model_summary_rows_and_counts_match_a_hand_count(capsys: pytest.CaptureFixture[str]) -> None:
    report = dry_run(task="cls", out=None)
    rows = {r["name"]: r for r in report["model"]["rows"]}
    # small_cnn width 32, depth 3 on 1-channel 8x8 digits, 10 classes: convs 1*32*9, 32*64*9, 64*128*9 (no bias),
    # BatchNorms 2*(32+64+128), head Linear 128*10+10.
    assert report["model"]["total_params"] == 288 + 18432 + 73728 + 2 * (32 + 64 + 128) + 1290
    assert rows["head.2"]["type"] == "Linear" and rows["head.2"]["output"] == "[64, 10]"
    assert rows["head.2"]["params"] == 1290
    assert rows["features.7"]["output"] == "[64, 64, 4, 4]"  # the MaxPool halves 8x8
    assert report["data"]["train_size"] + report["data"]["val_size"] == 1797  # scikit-learn's digits
    assert report["data"]["class_names"] == [str(i) for i in range(10)]
    assert report["data"]["batches_per_epoch"] == -(-report["data"]["train_size"] // 64)


@MODELS.register("dry_run_wrong_head", task="classification", override=True)
class WrongHead(nn.Module):
    """The founding brief's bug: a head built for 4x4 feature maps on 8x8 images (8*8*8 = 512 features, not 128)."""

    def __init__(self, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register("dry_run_inner_channels", task="classification", override=True)
class InnerChannels(nn.Module):
    """A second conv built for 16 input channels after a conv that gives 8."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)))


def test_wrong_head_size_exits_2_naming_the_layer_both_sizes_and_the_key() -> None:
    result = run_tool("train", "--task", "cls", "--dry-run", "model.name=mlp", "model.image_size=16", *TINY_CLS[2:])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # mlp's first Linear is built for 1*16*16 = 256 pixels; 8x8 digits give 64.
    assert "layer 'net.1' (Linear) expects 256 input features but got 64" in result.stderr
    assert "model.image_size" in result.stderr and "data.image_size" in result.stderr


def test_custom_model_head_mismatch_suggests_the_image_size_that_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        dry_run(task="cls", overrides=["model.name=dry_run_wrong_head", *TINY_CLS[2:]], out=None)
    text = str(info.value)
    assert "layer 'head.1' (Linear) expects 128 input features but got 512 (input shape [32, 512])" in text
    assert "data.image_size=4 would give 128" in text  # 8 * 8 * 8 features at 8 px -> 8 * 4 * 4 at 4 px
    assert train_main(["--task", "cls", "--dry-run", "model.name=dry_run_wrong_head", *TINY_CLS[2:]]) == 2
    err = capsys.readouterr().err
    assert "layer 'head.1' (Linear)" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_channel_mismatch_names_the_layer_and_channel_counts() -> None:
    with pytest.raises(ConfigError) as info:
        dry_run(task="cls", overrides=["model.in_chans=3", *TINY_CLS], out=None)
    text = str(info.value)
    assert "layer 'features.0' (Conv2d) expects 3 input channels but got 1 (input shape [32, 1, 8, 8])" in text
    assert "model.in_chans=1" in text and "data.channels=3" in text
    with pytest.raises(ConfigError) as info:
        dry_run(task="cls", overrides=["model.name=dry_run_inner_channels", *TINY_CLS[2:]], out=None)
    text = str(info.value)
    assert "layer 'body.0' (Conv2d) expects 16 input channels but got 8" in text
    assert "inner layer" in text and "model.width" in text


def test_normal_training_reports_a_mismatch_before_the_first_update_the_same_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert train_main(["--task", "cls", "model.in_chans=3", *TINY_CLS]) == 2
    err = capsys.readouterr().err
    assert "layer 'features.0' (Conv2d) expects 3 input channels but got 1" in err and "Traceback" not in err


@MODELS.register("dry_run_broken", task="classification", override=True)
class Broken(nn.Module):
    """A model bug that is not a shape mismatch: it keeps its traceback."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_other_errors_are_not_dressed_up_as_config_errors() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        dry_run(task="cls", overrides=["model.name=dry_run_broken", *TINY_CLS[2:]], out=None)
