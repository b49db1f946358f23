"""A checkpoint or exported model is a file people download: loading it never imports or calls what it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visionkit
from tests.conftest import TINY_CLS, merged
from visionkit import plugins
from visionkit.errors import PluginError

ROOT = Path(__file__).resolve().parents[2]
SIDE_EFFECT = "import pathlib, os\npathlib.Path(os.environ['VK_MARKER']).write_text('imported')\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained classification run."""
    work = tmp_path_factory.mktemp("untrusted") / "run"
    visionkit.train(None, merged(*TINY_CLS, "trainer.num_threads=1"), task="cls", work_dir=work)
    return work


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A module with a visible side effect on sys.path, its marker file, and an image to predict."""
    (tmp_path / "vk_side_effect.py").write_text(SIDE_EFFECT)
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("VK_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    saved = plugins.snapshot()
    yield {"dir": tmp_path, "marker": marker, "image": image}
    plugins.restore(saved)
    sys.modules.pop("vk_side_effect", None)


def _crafted(run: Path, folder: Path, listed: list[str]) -> Path:
    """The run's best checkpoint with its config's `plugins:` replaced."""
    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    ckpt["config"]["plugins"] = listed
    ckpt.pop("plugins", None)
    path = folder / "crafted" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_naming_a_function_never_calls_it(run: Path, tmp_path: Path) -> None:
    path = _crafted(run, tmp_path, ["os:abort", "__hello__:main"])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "eval.py"), str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr  # not -6 (SIGABRT): os.abort was never called
    assert "Hello world" not in proc.stdout  # __hello__.main() was never called either
    assert "trained with the plugin '__hello__:main'" in proc.stderr and "--plugin __hello__:main" in proc.stderr


def test_loading_a_checkpoint_imports_nothing_it_names(run: Path, hostile: dict[str, Path]) -> None:
    path = _crafted(run, hostile["dir"], ["vk_side_effect"])
    attempts = {
        "evaluate": lambda: visionkit.evaluate(path),
        "predict": lambda: visionkit.predict(path, [hostile["image"]], hostile["dir"] / "out"),
        "load_model": lambda: visionkit.load_model(path),
        "resume": lambda: visionkit.train(None, [], resume=path),
    }
    for what, attempt in attempts.items():
        with pytest.raises(PluginError, match=r"trained with the plugin 'vk_side_effect'.*--plugin vk_side_effect"):
            attempt()
        assert not hostile["marker"].exists(), what
    plugins.import_plugin("vk_side_effect")  # the user's own choice: now it loads, and the checkpoint evaluates
    assert hostile["marker"].read_text() == "imported"
    assert "val/top1" in visionkit.evaluate(path)


def test_a_checkpoint_records_its_plugins_as_information(run: Path) -> None:
    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["plugins"] == [plugins.describe(spec) for spec in ckpt["config"]["plugins"]]
    assert plugins.describe("visionkit_example") == {
        "spec": "visionkit_example",
        "module": "visionkit_example",
        "distribution": "visionkit-example",
    }


def test_an_exported_model_imports_nothing_its_sidecar_names(run: Path, hostile: dict[str, Path]) -> None:
    from visionkit.deploy.export import export_model

    sidecar = export_model(run, "onnx", hostile["dir"] / "export")
    path = Path(sidecar["sidecar_path"])
    data = json.loads(path.read_text())
    data["config"]["plugins"] = ["vk_side_effect"]
    path.write_text(json.dumps(data))
    with pytest.raises(PluginError, match="Exported model .* trained with the plugin 'vk_side_effect'"):
        visionkit.predict(sidecar["path"], [hostile["image"]], hostile["dir"] / "out")
    assert not hostile["marker"].exists() and "VK_MARKER" in os.environ
