"""data.channels converts classification images: grey to 3 channels, RGB to grey (as PIL's "L"), alpha dropped."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import visionkit
from tests.conftest import TINY_CLS, TINY_DATA, merged
from visionkit.data.facts import DataFacts
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.shape_errors import key_hint
from visionkit.errors import ConfigError, DataError
from visionkit.registry import DATASETS, TASKS


def _task(*overrides: str) -> Any:
    """A classification task object for `overrides` (on the tiny data settings)."""
    cfg = visionkit.load_config(None, merged(*TINY_DATA, "data.image_size=null", *overrides), task="cls")
    return TASKS.get("classification")(cfg)


def _rgb_folder(root: Path) -> list[Path]:
    """Two classes of small random colour images (one RGBA), saved as PNG; their paths, class by class."""
    rng = np.random.default_rng(0)
    paths = []
    for label, cls in enumerate(("a", "b")):
        for i in range(2):
            mode = "RGBA" if (label, i) == (1, 1) else "RGB"
            pixels = rng.integers(0, 256, (6, 6, len(mode)), dtype=np.uint8)
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode).save(path)
            paths.append(path)
    return paths


def _pixels(x: torch.Tensor) -> np.ndarray:
    """Undo the task's default normalisation (mean = std = 0.5): CHW float -> CHW uint8."""
    return torch.round((x * 0.5 + 0.5) * 255).to(torch.uint8).numpy()


def test_digits_with_data_channels_3_train_and_the_checkpoint_says_3(tmp_path: Path) -> None:
    grey = DATASETS.build("digits", task="classification")[0][0]
    rgb = _task("data.channels=3").build_dataset("train")
    x = rgb[0][0]
    assert x.shape == (3, 8, 8) and rgb.channels == 3 and rgb.facts().channels == 3
    assert all(torch.equal(x[c], grey[0]) for c in range(3))  # the grey channel, repeated
    overrides = merged(*TINY_CLS, "data.channels=3", "trainer.max_steps=1", "trainer.progress=false")
    result = visionkit.train(None, overrides, task="cls", work_dir=tmp_path / "run")
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["facts"]["channels"] == 3
    first_conv = next(v for k, v in ckpt["model"].items() if k.endswith("weight") and v.dim() == 4)
    assert first_conv.shape[1] == 3


def test_rgb_folder_with_data_channels_1_matches_pil_luma(tmp_path: Path) -> None:
    paths = _rgb_folder(tmp_path / "imgs")
    spec = f"{{name: image_folder, root: '{tmp_path / 'imgs'}'}}"
    task = _task("data.channels=1", f"data.train={spec}", f"data.val={spec}")
    ds = task.build_dataset("train")
    assert ds.channels == 1 and task.data_facts(ds, None).channels == 1
    for i, path in enumerate(paths):
        x, label = ds[i]
        assert x.shape == (1, 6, 6) and label == i // 2
        with Image.open(path) as im:
            expected = np.asarray(im.convert("L"))  # RGBA too: PIL's luma ignores alpha
        assert np.array_equal(_pixels(x)[0], expected), path


def test_in_memory_rgb_converts_to_pil_luma(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    chw = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)  # CIFAR-10 images are 32x32
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": chw.reshape(4, -1), b"labels": [0, 1, 2, 3]}, fh)
    ds = DATASETS.build(
        {"name": "cifar10", "root": str(tmp_path), "split": "val", "channels": 1}, task="classification"
    )
    assert ds.channels == 1 and ds.facts().channels == 1
    for i in range(4):
        expected = np.asarray(Image.fromarray(chw[i].transpose(1, 2, 0), "RGB").convert("L"))
        assert np.array_equal(ds.image(i)[:, :, 0], expected)
        assert np.array_equal(_pixels(ds[i][0])[0], expected)


def test_explicit_split_channels_win_over_data_channels(tmp_path: Path) -> None:
    _rgb_folder(tmp_path / "imgs")
    root = tmp_path / "imgs"
    task = _task(
        "data.channels=1",
        f"data.train={{name: image_folder, root: '{root}', channels: 3}}",
        f"data.val={{name: image_folder, root: '{root}'}}",
    )
    assert task.build_dataset("train")[0][0].shape[0] == 3  # data.train.channels
    assert task.build_dataset("val")[0][0].shape[0] == 1  # data.channels


@pytest.mark.parametrize("value", ["2", "5"])
def test_unsupported_channel_count_names_the_key_and_the_choices(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        _task(f"data.channels={value}").build_dataset("train")
    text = str(info.value)
    assert f"data.channels (or data.train.channels) is {value}" in text
    assert "null" in text and "1 (grey" in text and "3 (RGB" in text


@pytest.mark.parametrize("value", ["0", "rgb"])
def test_channel_count_that_is_not_a_positive_integer_is_refused_by_the_config(value: str) -> None:
    with pytest.raises(ConfigError, match="data.channels"):
        _task(f"data.channels={value}").validate()


def _hint(expected: int, got: int, channels: int | None, train: Any = "digits", **model: Any) -> str:
    """The advice for a first conv built for `expected` channels fed `got` (facts from data.channels or `got`)."""
    cfg = {"task": "classification", "model": {"name": "small_cnn", **model}, "data": {"channels": channels}}
    cfg["data"]["train"] = train
    return key_hint("channels", cfg, DataFacts(channels=channels or got), expected, got, first_layer=True)


def test_channel_advice_names_the_conversion_and_the_model_key_with_the_right_numbers() -> None:
    text = _hint(expected=3, got=1, channels=None)
    assert text == "the images have 1 channel: set data.channels=3 to convert them, or model.in_chans=1"
    text = _hint(expected=1, got=3, channels=None)
    assert text == "the images have 3 channels: set data.channels=1 to convert them, or model.in_chans=3"


def test_channel_advice_never_repeats_a_value_already_set() -> None:
    # data.channels=3 already, but a dataset that does not convert (a plugin's) still gives grey images.
    text = _hint(expected=3, got=1, channels=3, train={"name": "bars"})
    assert "set data.channels=3" not in text and "the images have 3" not in text
    assert "although data.channels is 3" in text and "'bars'" in text and "model.in_chans=1" in text
    # data.train.channels overrides data.channels.
    text = _hint(expected=3, got=1, channels=3, train={"name": "image_folder", "root": "x", "channels": 1})
    assert "data.train.channels=1 overrides data.channels=3" in text and "set data.channels=3" not in text


def test_train_and_val_of_different_channel_counts_are_a_data_error_before_training(tmp_path: Path) -> None:
    _rgb_folder(tmp_path / "train")
    for path in _rgb_folder(tmp_path / "val"):
        Image.open(path).convert("L").save(path)
    task = _task(
        f"data.train={{name: image_folder, root: {tmp_path / 'train'}}}",
        f"data.val={{name: image_folder, root: {tmp_path / 'val'}}}",
    )
    train, val = task.build_dataset("train"), task.build_dataset("val")
    with pytest.raises(DataError, match=r"data.val images have 1 channel\(s\) but data.train images have 3.*"
                       r"Set data.channels=3"):  # fmt: skip
        task.data_facts(train, val)
    converted = _task(
        f"data.train={{name: image_folder, root: {tmp_path / 'train'}}}",
        f"data.val={{name: image_folder, root: {tmp_path / 'val'}}}",
        "data.channels=3",
    )
    facts = converted.data_facts(converted.build_dataset("train"), converted.build_dataset("val"))
    assert facts.channels == 3
