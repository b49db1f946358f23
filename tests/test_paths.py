"""Paths: a run's config.yaml holds data paths that work from any folder, and a missing relative path says
what it was resolved against (issue 21)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import run_tool


def _folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                value = 40 if cls == "a" else 200
                pixels = np.clip(rng.normal(value, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_config_yaml_paths_work_from_any_folder_and_missing_ones_say_from_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from visionkit.cli import main

    work = tmp_path / "project"
    _folder(work / "data")
    args = ["--task", "cls", "data.train={_delete_: true, name: image_folder, root: data/train}",
            "data.val={_delete_: true, name: image_folder, root: data/val}", "data.image_size=8",
            "data.batch_size=4", "data.num_workers=0", "trainer.epochs=1", "model.width=8", "model.depth=2",
            "data.train_transforms=[]"]  # fmt: skip
    proc = run_tool("train", *args, "--work-dir", str(tmp_path / "run"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["train"]["root"] == str(work / "data" / "train")
    monkeypatch.chdir(tmp_path)  # another working folder (in process: the same commands, no start-up)
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0, capsys.readouterr().err[-2000:]
    monkeypatch.chdir(work)
    capsys.readouterr()
    nope = "data.train={_delete_: true, name: image_folder, root: data/nope}"
    assert main(["train", "--task", "cls", nope, "--dry-run"]) == 2
    assert f"Relative paths are taken from the working folder '{work}'" in capsys.readouterr().err


SCRIPT = """
import sys
from torch import nn
import visionkit
from visionkit.registry import MODELS
{import_line}

@MODELS.register("{name}", task="classification")
def build(num_classes: int, in_chans: int = 3, **_):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_chans, num_classes))

if __name__ == "__main__":
    visionkit.train(None, ["model={{_delete_: true, name: {model}}}", "data.image_size=8", "data.batch_size=64",
                           "data.num_workers=0", "trainer.max_steps=2", "trainer.progress=false",
                           "data.train_transforms=[]"], task="cls", work_dir=sys.argv[1])
"""


def test_a_component_unknown_on_load_says_where_it_was_defined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from visionkit.cli import main

    script = tmp_path / "train_mine.py"
    script.write_text(SCRIPT.format(import_line="", name="my_net", model="my_net"))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "a")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main(["eval", str(tmp_path / "a")]) == 2  # in process: this test's process never registered my_net
    err = capsys.readouterr().err
    assert "Unknown model 'my_net'" in err
    assert f"registered by the script {script}" in err and "--plugin MODULE" in err
    (tmp_path / "my_parts.py").write_text(SCRIPT.format(import_line="", name="my_part_net", model="x"))
    script.write_text(SCRIPT.replace("@MODELS", "# @MODELS").format(import_line="import my_parts", name="unused",
                                                                   model="my_part_net"))  # fmt: skip
    env = {"PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "b")], capture_output=True, text=True,
                          env={**os.environ, **env})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.syspath_prepend(str(tmp_path))  # as PYTHONPATH does for the subprocesses
    assert main(["eval", str(tmp_path / "b")]) == 2
    assert "defined in module 'my_parts': pass --plugin my_parts" in capsys.readouterr().err
    assert "my_parts" not in sys.modules  # named, never imported
    good = run_tool("eval", str(tmp_path / "b"), "--plugin", "my_parts", "--json", env=env)
    assert good.returncode == 0, good.stderr[-2000:]
