"""Packaging: the default configs (configs/) ship inside the package; a non-editable install works from anywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import TINY_CLS
from visionkit.config import CONFIG_ROOT, find_config, load_config, read_yaml, task_config_path
from visionkit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = sorted(p.relative_to(CONFIG_ROOT).as_posix() for p in CONFIG_ROOT.rglob("*.yaml"))


def test_default_configs_live_at_the_repository_root() -> None:
    assert CONFIG_ROOT == ROOT / "configs"  # a checkout (or editable install) reads them in place
    assert not (ROOT / "visionkit" / "configs").exists()
    for task in ("cls", "seg", "det", "gen"):
        assert task_config_path(task) == CONFIG_ROOT / task / "default.yaml"
    assert "_base_/runtime.yaml" in PACKAGED
    for name in PACKAGED:
        if not name.startswith("_base_/"):  # every task config inherits the shared runtime settings
            assert read_yaml(CONFIG_ROOT / name)["trainer"]["device"] == "auto", name


def test_config_paths_from_the_repo_and_relative_to_the_packaged_configs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert load_config("configs/cls/default.yaml")["model"]["name"] == "small_cnn"
    monkeypatch.chdir(tmp_path)
    assert find_config("cls/default.yaml") == CONFIG_ROOT / "cls" / "default.yaml"
    assert load_config("cls/default.yaml", ["trainer.epochs=2"])["trainer"]["epochs"] == 2
    # A file that exists from the working directory wins over the packaged one.
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "default.yaml").write_text("task: cls\nmodel: {name: mlp}\n")
    assert find_config("cls/default.yaml") == Path("cls/default.yaml")
    assert load_config("cls/default.yaml")["model"] == {"name": "mlp"}
    with pytest.raises(ConfigError, match="does not exist.*cls/default.yaml"):
        load_config("cls/nope.yaml")


def _copy_sources(dst: Path) -> Path:
    """Copy what the build reads, so that building leaves no build/ or *.egg-info in the working tree."""
    dst.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dst / name)
    for folder in ("visionkit", "configs"):
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def test_non_editable_install_runs_from_an_empty_directory(tmp_path) -> None:
    target, empty = tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    # Offline: no index, no dependencies, no isolated build env (setuptools comes from this venv).
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps"]
    cmd += ["--no-build-isolation", "--target", str(target), str(_copy_sources(tmp_path / "src"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = target / "visionkit" / "configs"  # configs/ of the sources, shipped inside the package
    assert sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*.yaml")) == PACKAGED

    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, not the repository's
    probe = textwrap.dedent(
        """
        import json, visionkit, visionkit.config as c
        print(json.dumps({"file": visionkit.__file__, "cls": str(c.task_config_path("cls")),
                          "relative": str(c.find_config("seg/folder.yaml"))}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=empty, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).resolve() == (target / "visionkit" / "__init__.py").resolve()
    assert Path(found["cls"]).resolve() == (installed / "cls" / "default.yaml").resolve()
    assert Path(found["relative"]).resolve() == (installed / "seg" / "folder.yaml").resolve()

    # The `visionkit` console script of the install trains the packaged default from the empty directory.
    args = ["train", "--task", "cls", "--work-dir", str(tmp_path / "run"), *TINY_CLS, "trainer.progress=false"]
    proc = subprocess.run(
        [str(target / "bin" / "visionkit"), *args], cwd=empty, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "final: " in proc.stdout
    assert (tmp_path / "run" / "summary.json").is_file()
    assert list(empty.iterdir()) == []  # nothing written relative to the working directory
