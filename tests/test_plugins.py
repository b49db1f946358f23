"""Plugin discovery: the installed example, explicit --plugin modules, and a broken plugin."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.conftest import TINY_DATA, run_tool
from visionkit.registry import DATASETS, MODELS


def test_installed_example_plugin_is_discovered_with_its_origin() -> None:
    assert MODELS.entry("tiny_resnet", task="cls").origin == "plugin visionkit-example"
    assert DATASETS.entry("bars", task="cls").origin == "plugin visionkit-example"
    proc = run_tool("list", "--task", "cls")
    assert proc.returncode == 0
    line = next(row for row in proc.stdout.splitlines() if "tiny_resnet" in row)
    assert "plugin visionkit-example" in line
    assert "small_cnn" in proc.stdout and "built-in" in proc.stdout


def _write_plugin(folder: Path) -> None:
    (folder / "my_vk_plugin.py").write_text(
        textwrap.dedent("""
        from torch import nn
        from visionkit.registry import MODELS

        @MODELS.register("linear_probe", task="classification")
        def linear_probe(num_classes: int, in_chans: int = 1, image_size: int = 8) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, num_classes))
    """)
    )


def test_plugin_flag_and_config_plugins_key(tmp_path: Path) -> None:
    _write_plugin(tmp_path)
    env = {"PYTHONPATH": str(tmp_path)}
    base = ["--task", "cls", *TINY_DATA, "model.name=linear_probe", "trainer.max_steps=3"]
    proc = run_tool("train", "--plugin", "my_vk_plugin", "--work-dir", str(tmp_path / "a"), *base, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_tool("train", "--work-dir", str(tmp_path / "b"), *base, "plugins=[my_vk_plugin]", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == 3
    proc = run_tool("train", "--plugin", "not_a_module_xyz", "--task", "cls", env=env)
    assert proc.returncode == 2 and "not_a_module_xyz" in proc.stderr and "Traceback" not in proc.stderr


def test_broken_installed_plugin_names_distribution_entry_point_and_error(tmp_path: Path) -> None:
    (tmp_path / "broken_vk.py").write_text("raise RuntimeError('boom at import')\n")
    info = tmp_path / "broken_vk_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-vk-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[visionkit.plugins]\nbroken = broken_vk\n")
    proc = run_tool("list", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 2
    for part in ("broken-vk-plugin", "'broken'", "broken_vk", "RuntimeError: boom at import"):
        assert part in proc.stderr
    assert "Traceback" not in proc.stderr
