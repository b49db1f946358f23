"""A third-party module registers a segmentation model and loss and trains with them from a config."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import visionkit
from visionkit.registry import LOSSES, MODELS

from .conftest import write_folder_dataset

PLUGIN = textwrap.dedent('''
    """A third-party segmentation plugin: a tiny model and a loss, registered through the public API."""
    from __future__ import annotations

    import torch
    import torch.nn.functional as F
    from torch import nn

    from visionkit.registry import LOSSES, MODELS

    CALLS = {"model": 0, "loss": 0}


    @MODELS.register("{model}", task="segmentation")
    class TinySegNet(nn.Module):
        """Two convolutions, logits at half resolution (the task resizes them to the mask)."""

        def __init__(self, num_classes: int, width: int = 8) -> None:
            super().__init__()
            CALLS["model"] += 1
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, num_classes, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.body(images)


    @LOSSES.register("{loss}", task="segmentation")
    class ScaledCrossEntropy(nn.Module):
        """Cross-entropy times a factor; counts its calls so a test can see it was used."""

        def __init__(self, num_classes: int, ignore_index: int | None = 255, factor: float = 1.0) -> None:
            super().__init__()
            self.factor, self.ignore_index = factor, ignore_index

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            CALLS["loss"] += 1
            return self.factor * F.cross_entropy(logits, target, ignore_index=self.ignore_index)
''')


def _write_plugin(tmp_path: Path, module: str) -> tuple[str, str]:
    model, loss = f"{module}_net", f"{module}_loss"
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / f"{module}.py").write_text(PLUGIN.replace("{model}", model).replace("{loss}", loss))
    return model, loss


def _config(tmp_path: Path, module: str, model: str, loss: str) -> dict:
    write_folder_dataset(tmp_path / "data", count=4, num_classes=3)
    data = {"name": "seg_folder", "root": str(tmp_path / "data")}
    return {
        "task": "seg",
        "plugins": [module],
        "model": {"name": model, "width": 4},
        "loss": {"name": loss, "factor": 2.0},
        "data": {"train": data, "val": data, "num_classes": 3, "batch_size": 2, "num_workers": 0},
        "segmentation": {"num_samples": 1},
        "trainer": {"max_steps": 2, "epochs": 1, "progress": False, "log_every": 1},
    }


def test_plugin_model_and_loss_used_from_config_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = "vk_seg_plugin_inproc"
    model, loss = _write_plugin(tmp_path, module)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    result = visionkit.train(_config(tmp_path, module, model, loss), work_dir=tmp_path / "run")
    plugin = __import__(module)
    assert plugin.CALLS["model"] >= 1 and plugin.CALLS["loss"] >= 2  # two training steps (+ validation)
    assert MODELS.entry(model).module == module and LOSSES.entry(loss).module == module
    assert "segmentation" in MODELS.entry(model).tasks and model in MODELS.names("seg")
    assert 0 <= result.metrics["val/mIoU"] <= 1
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records)
