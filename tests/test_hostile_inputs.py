"""Hostile and careless inputs end in one clear message naming the file, key or value, never a traceback."""

from __future__ import annotations

import errno
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visionkit
from tests.conftest import TINY_CLS, merged, run_tool
from visionkit.data import DataWarning
from visionkit.data.images import image_header, read_image
from visionkit.engine import checkpoint
from visionkit.errors import ConfigError, DataError, VisionkitError


@pytest.mark.parametrize("override", ["loss.label_smoothing=.nan", "optimizer.lr=.nan", "model.width=.inf"])
def test_non_finite_numbers_are_refused_naming_the_key(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}' is (nan|inf); numbers in a config must be finite"):
        visionkit.load_config(None, [override], task="cls")


def test_non_finite_number_from_the_command_line_exits_2() -> None:
    proc = run_tool("train", "--task", "cls", "optimizer.lr=.nan")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "'optimizer.lr' is nan" in proc.stderr


def test_yaml_that_is_binary_deep_or_keyed_by_a_list_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "blob.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    (tmp_path / "child.yaml").write_text("_base_: blob.yaml\ntask: cls\n")
    with pytest.raises(ConfigError, match="blob.yaml' is not a text file"):
        visionkit.load_config(tmp_path / "child.yaml")
    (tmp_path / "deep.yaml").write_text("task: cls\nx: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(ConfigError, match="nests .*levels"):
        visionkit.load_config(tmp_path / "deep.yaml")
    with pytest.raises(ConfigError, match="nests .*levels"):
        visionkit.load_config(None, ["trainer.seed=" + "[" * 1000 + "]" * 1000], task="cls")
    (tmp_path / "listkey.yaml").write_text("task: cls\n? [a]\n: b\n")
    with pytest.raises(ConfigError, match="mapping key on line 2 is a list; config keys are names"):
        visionkit.load_config(tmp_path / "listkey.yaml")


@pytest.mark.parametrize("bound", [{"low": float("nan"), "high": 1.0}, {"low": 0.1, "high": float("inf")}])
def test_a_sweep_range_must_be_finite(bound: dict) -> None:
    from visionkit.tune.space import parse_distribution

    with pytest.raises(ConfigError, match="must be a finite number"):
        parse_distribution("optimizer.lr", {"type": "float", **bound}, "space.yaml")


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height, with no pixel data (a few dozen bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_an_image_claiming_billions_of_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 40000, 40000)
    for read in (read_image, image_header):
        with pytest.raises(DataError, match=r"bomb.png' is too large to read .*VISIONKIT_MAX_IMAGE_PIXELS"):
            read(bomb)


def test_a_grey_and_alpha_mask_is_a_data_error(tmp_path: Path) -> None:
    from visionkit.tasks.segmentation.datasets import read_mask

    Image.fromarray(np.zeros((4, 4, 2), np.uint8), mode="LA").save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m.png' is a LA image .*single-channel or palette PNG"):
        read_mask(tmp_path / "m.png")


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("PytorchStreamWriter failed: file write failed")],
)
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    checkpoint.save_atomic({"step": 1}, path)

    def fill_the_disk(obj: object, target: str) -> None:
        Path(target).write_bytes(b"half a checkpoint")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", fill_the_disk)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: type("U", (), {"free": 0})())
    with pytest.raises(VisionkitError, match="the disk holding .*checkpoints' is full .*previous checkpoint .*kept"):
        checkpoint.save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # the half-written temporary is gone


def test_detection_box_notes_are_visionkit_warnings() -> None:
    from visionkit.tasks.detection.datasets import BoxChecker

    checker = BoxChecker("clip", "data.train")
    checker.check([-4, 0, 8, 8], 16, 16, "box 1")
    with pytest.warns(DataWarning, match="1 box.* clipped"):  # printed as `warning: ...` by the command line
        checker.report()


def test_resuming_a_finished_run_changes_nothing_and_says_how_to_extend_it(tmp_path: Path, capsys) -> None:
    work = tmp_path / "run"
    first = visionkit.train(None, merged(*TINY_CLS, "trainer.num_threads=1"), task="cls", work_dir=work)
    files = {name: (work / name).read_bytes() for name in ("summary.json", "metrics.jsonl")}
    capsys.readouterr()
    again = visionkit.train(None, [], resume="auto", work_dir=work)
    said = capsys.readouterr().out
    assert "is complete (1 epochs" in said and f"--resume auto --work-dir {work.resolve()} trainer.epochs=2" in said
    assert again.metrics == first.metrics and again.best == first.best
    assert {name: (work / name).read_bytes() for name in files} == files  # summary.json keeps its tables
