"""Paths: a run's config.yaml holds data paths that work from any folder, and a missing relative path says
what it was resolved against (issue 21)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_config_yaml_paths_work_from_any_folder_and_missing_ones_say_from_where(tmp_path: Path) -> None:
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
    elsewhere = run_tool("eval", str(tmp_path / "run"), "--json", cwd=tmp_path)  # another working folder
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    missing = run_tool("train", *args[:1], "cls", "data.train={_delete_: true, name: image_folder, root: data/nope}",
                       "--dry-run", cwd=work)  # fmt: skip
    assert missing.returncode == 2
    assert f"Relative paths are taken from the working folder '{work}'" in missing.stderr
