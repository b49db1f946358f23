"""Plugin discovery: the installed example, explicit --plugin modules, and a broken plugin."""

from __future__ import annotations

import json
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA, run_tool
from visionkit import plugins
from visionkit.errors import PluginError
from visionkit.registry import DATASETS, LOSSES, MODELS, TASKS
from visionkit.tasks.segmentation.losses import CrossEntropyLoss


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


def test_plugin_flag_and_config_plugins_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_plugin(tmp_path)
    env = {"PYTHONPATH": str(tmp_path)}
    base = ["--task", "cls", *TINY_DATA, "model.name=linear_probe", "trainer.max_steps=3"]
    proc = run_tool("train", "--plugin", "my_vk_plugin", "--work-dir", str(tmp_path / "a"), *base, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_tool("train", "--work-dir", str(tmp_path / "b"), *base, "plugins=[my_vk_plugin]", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == 3
    from visionkit.cli import main

    assert main(["train", "--plugin", "not_a_module_xyz", "--task", "cls"]) == 2  # in process: no start-up
    err = capsys.readouterr().err
    assert "not_a_module_xyz" in err and "Traceback" not in err


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


HALF_BROKEN = textwrap.dedent("""
    from visionkit.registry import DATASETS, LOSSES, MODELS, TASKS

    @MODELS.register("{prefix}_model", task="classification", aliases=["{prefix}_alias"])
    def model(num_classes: int) -> None:
        return None

    LOSSES.register("ce_override", lambda: None, task="segmentation", aliases=["ce"], override=True)
    MODELS.register_namespace("{prefix}", lambda name: None)
    TASKS.register("{prefix}_task", object)

    def setup() -> None:
        DATASETS.register("{prefix}_data", lambda: None, task="classification")
        raise RuntimeError("boom in setup")

    if {fail_at_import}:
        raise RuntimeError("boom at import")
""")


def _half_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, fail_at_import: bool) -> None:
    MODELS.names()  # built-ins and installed plugins first, so only the broken module's import is measured
    source = HALF_BROKEN.replace("{prefix}", module).replace("{fail_at_import}", str(fail_at_import))
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


def _assert_nothing_left(module: str) -> None:
    assert f"{module}_model" not in MODELS and f"{module}_alias" not in MODELS
    assert f"{module}_data" not in DATASETS
    assert not any(e.name == f"{module}/*" for e in MODELS.entries()) and f"{module}_task" not in TASKS
    assert LOSSES.get("ce", "segmentation") is CrossEntropyLoss  # the override was undone
    assert module not in sys.modules


@pytest.mark.parametrize(
    ("spec_suffix", "fail_at_import", "message"), [("", True, "boom at import"), (":setup", False, "boom in setup")]
)
def test_plugin_failing_half_way_leaves_no_registrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_suffix: str, fail_at_import: bool, message: str
) -> None:
    module = f"vk_half_broken_{'import' if fail_at_import else 'setup'}"
    _half_broken(tmp_path, monkeypatch, module, fail_at_import)
    with pytest.raises(PluginError, match=rf"Plugin '{module}{spec_suffix}' failed to load: RuntimeError: {message}"):
        plugins.import_plugin(module + spec_suffix)
    _assert_nothing_left(module)


def test_entry_point_failing_half_way_leaves_no_registrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = "vk_half_broken_ep"
    _half_broken(tmp_path, monkeypatch, module, fail_at_import=False)
    ep = EntryPoint("halfway", f"{module}:setup", plugins.GROUP)
    with pytest.raises(PluginError, match=rf"Plugin 'halfway' = '{module}:setup' .*RuntimeError: boom in setup"):
        plugins._load_entry_point(ep)
    _assert_nothing_left(module)
