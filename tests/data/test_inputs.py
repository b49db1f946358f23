"""Input walking: each image once, symlink loops harmless, hidden files skipped, outputs never among the inputs."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionkit
from tests.conftest import TINY_CLS, merged
from visionkit.data import DataWarning
from visionkit.data.inputs import walk_inputs
from visionkit.errors import ConfigError


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def test_globs_and_folders_through_symlink_loops_give_each_image_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _image(root / "a.png")
    _image(root / "sub" / "b.png")
    os.symlink(root, root / "sub" / "loop1")  # two links back up: followed, the paths would grow exponentially
    os.symlink(root / "sub", root / "loop2")
    os.symlink(root / "a.png", root / "sub" / "same_as_a.png")  # a file reached twice counts once
    for inputs in ([f"{root}/**/*.png"], [str(root)], [str(root), f"{root}/*.png"]):
        start = time.monotonic()
        found = walk_inputs(inputs)
        assert time.monotonic() - start < 5
        assert sorted(p.name for p, _ in found) == ["a.png", "b.png"], inputs


def test_glob_patterns_match_as_glob_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("x/a.png", "x/b.jpg", "x/y/c.png", "x/y/z/d.png", "w/e.png"):
        _image(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    names = lambda pattern: sorted(p.as_posix() for p, _ in walk_inputs([pattern]))  # noqa: E731
    assert names("x/*.png") == ["x/a.png"]
    assert names("x/**/*.png") == ["x/a.png", "x/y/c.png", "x/y/z/d.png"]
    assert names("*/y/*.png") == ["x/y/c.png"]
    assert names("x/[ab].*") == ["x/a.png", "x/b.jpg"]
    assert names(f"{tmp_path}/w/*.png") == [f"{tmp_path}/w/e.png"]


def test_hidden_files_and_folders_are_skipped_with_a_note(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not an image
    _image(tmp_path / ".thumbs" / "t.png")
    with pytest.warns(DataWarning, match="skipped 2 hidden"):
        assert [p.name for p, _ in walk_inputs([tmp_path])] == ["a.png"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("inputs") / "run"
    visionkit.train(None, merged(*TINY_CLS, "trainer.num_threads=1"), task="cls", work_dir=run)
    return run / "checkpoints" / "best.pt"


def _digests(folder: Path) -> dict[str, str]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_predict_never_writes_among_its_inputs_nor_reads_its_outputs(checkpoint: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "images"
    for i, name in enumerate(("predictions.png", "overlays/x.png", "y.png")):
        _image(inputs / name, 40 * i)
    before = _digests(inputs)
    with pytest.raises(ConfigError, match="output folder .* holds the input"):
        visionkit.predict(checkpoint, [inputs], inputs)
    with pytest.raises(ConfigError, match="output folder .* holds the input"):
        visionkit.predict(checkpoint, [inputs / "y.png"], tmp_path)
    out = inputs / "predictions"  # inside the input folder: written there, never walked
    for _ in range(2):
        result = visionkit.predict(checkpoint, [inputs], out, progress=False)
        assert sorted(r["input"] for r in result["predictions"]) == sorted(str(inputs / n) for n in before)
    assert {k: v for k, v in _digests(inputs).items() if not k.startswith("predictions/")} == before
