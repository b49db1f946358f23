"""Plugins a run used are recorded with it; misfitting checkpoint weights, empty plugins and overrides are explained."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from tests.conftest import TINY_DATA, run_tool
from visionkit import cli, plugins
from visionkit.engine.weights import load_model_weights
from visionkit.errors import ConfigError
from visionkit.registry import MODELS

PROBE = textwrap.dedent("""
    from torch import nn
    from visionkit.registry import MODELS

    @MODELS.register("{name}", task="classification")
    def probe(num_classes: int, in_chans: int = 1, image_size: int = 8) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, num_classes))
""")


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path on sys.path for plugin modules `vk_hard_*`; registries and the plugin lists restored afterwards."""
    MODELS.names()  # built-ins and installed plugins first, so the restore keeps them
    saved = plugins.snapshot()
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    plugins.restore(saved)
    for name in [m for m in sys.modules if m.startswith("vk_hard_")]:
        del sys.modules[name]


def test_plugin_flag_is_recorded_and_its_checkpoint_evaluates_without_it(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin_dir / "vk_hard_probe.py").write_text(PROBE.replace("{name}", "hard_probe"))
    env = {"PYTHONPATH": str(plugin_dir)}
    run = plugin_dir / "run"
    args = ["--task", "cls", *TINY_DATA, "model.name=hard_probe", "trainer.max_steps=2", "trainer.val_every=2"]
    proc = run_tool("train", "--plugin", "vk_hard_probe", "--work-dir", str(run), *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == ["vk_hard_probe"]
    best = run / "checkpoints" / "best.pt"
    assert torch.load(best, weights_only=True)["config"]["plugins"] == ["vk_hard_probe"]
    proc = run_tool("eval", str(best), env=env)  # the checkpoint names the plugin, but never imports it
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trained with the plugin 'vk_hard_probe'" in proc.stderr and "pass --plugin vk_hard_probe" in proc.stderr
    assert cli.eval_main([str(best), "--plugin", "vk_hard_probe"]) == 0  # in process: the same command
    assert "accuracy" in capsys.readouterr().out
    # A model.* setting that builds another shape: the file and the first misfitting tensor, no traceback.
    assert cli.eval_main([str(best), "--plugin", "vk_hard_probe", "model.image_size=4"]) == 2
    err = capsys.readouterr().err
    assert f"error: The weights in '{best}' do not fit the model" in err
    assert "'1.weight' has shape [10, 64] in the file but [10, 16] in the model" in err
    assert "model.* setting" in err and "--plugin NAME" in err and "Traceback" not in err


def test_python_api_records_imported_plugins_once_in_order(plugin_dir: Path) -> None:
    (plugin_dir / "vk_hard_api.py").write_text(PROBE.replace("{name}", "hard_api_probe"))
    before = plugins.user_plugins()  # what earlier tests of this process imported
    plugins.import_plugin("vk_hard_api")
    assert plugins.user_plugins() == [*before, "vk_hard_api"]
    assert plugins.record_plugins(["other", "vk_hard_api"])[:2] == ["other", "vk_hard_api"]
    assert plugins.record_plugins(None) == [*before, "vk_hard_api"]
    uses = {"task": "classification", "model": {"name": "hard_api_probe", "width": 8}}
    assert plugins.record_plugins(["other"], uses) == ["other", "vk_hard_api"]
    # A plugin this process imported for something else is not recorded for a run that does not use it.
    assert plugins.record_plugins(["other"], {"task": "classification", "model": {"name": "small_cnn"}}) == ["other"]


def test_a_plugin_that_registers_a_namespace_is_recorded_for_runs_that_use_it(plugin_dir: Path) -> None:
    (plugin_dir / "vk_hard_ns.py").write_text(
        "from visionkit.registry import MODELS\n"
        "def build(name, **kwargs):\n    raise NotImplementedError\n"
        "MODELS.register_namespace('hardns', build, task='classification')\n"
    )
    plugins.import_plugin("vk_hard_ns")
    assert "vk_hard_ns" in plugins.record_plugins([], {"task": "classification", "model": {"name": "hardns/tiny"}})
    assert "vk_hard_ns" not in plugins.record_plugins([], {"task": "classification", "model": {"name": "small_cnn"}})


def test_misfitting_state_dict_names_the_file_and_the_first_tensor() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    state = {k.replace("2.", "4."): v for k, v in model.state_dict().items()}  # a renamed layer
    with pytest.raises(ConfigError) as err:
        load_model_weights(model, state, "runs/x/best.pt")
    text = str(err.value)
    assert "'runs/x/best.pt'" in text and "'2.weight' is not in the file" in text
    assert "'4.weight' is not in the model" in text and "2 missing, 2 unexpected" in text
    good = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    load_model_weights(good, model.state_dict(), "same.pt")
    assert torch.equal(good[2].weight, model[2].weight)


def test_plugin_registering_nothing_warns_with_the_function_hint(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lazy = PROBE.replace("{name}", "hard_lazy_probe").replace("@MODELS", "# @MODELS")
    lazy += "\ndef register():\n    MODELS.register('hard_lazy_probe', probe)\n"
    (plugin_dir / "vk_hard_lazy.py").write_text(lazy)
    plugins.import_plugin("vk_hard_lazy")
    err = capsys.readouterr().err
    assert "warning: plugin 'vk_hard_lazy' registered nothing" in err
    assert "--plugin vk_hard_lazy:FUNCTION" in err and "register" in err
    plugins.import_plugin("vk_hard_lazy:register")  # the function registers: no warning
    assert "hard_lazy_probe" in MODELS and capsys.readouterr().err == ""


def test_plugin_overriding_a_builtin_says_so_and_without_override_exits_2(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin_dir / "vk_hard_clash.py").write_text(PROBE.replace("{name}", "small_cnn"))
    assert cli.train_main(["--plugin", "vk_hard_clash", "--task", "cls"]) == 2
    err = capsys.readouterr().err
    assert "error: Plugin 'vk_hard_clash' failed to load: model name 'small_cnn' is already registered" in err
    assert "(built-in)" in err and "override=True" in err and "Traceback" not in err
    assert MODELS.entry("small_cnn", task="cls").origin == "built-in"
    source = PROBE.replace("{name}", "small_cnn").replace('"classification")', '"classification", override=True)')
    (plugin_dir / "vk_hard_override.py").write_text(source)
    plugins.import_plugin("vk_hard_override")
    err = capsys.readouterr().err
    assert "warning: model name 'small_cnn' (classification) from built-in (visionkit.tasks." in err
    assert "replaced by vk_hard_override" in err and "override=True" in err
    assert MODELS.entry("small_cnn", task="cls").module == "vk_hard_override"
