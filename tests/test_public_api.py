"""The plugin API is importable from `visionkit`; earlier names still resolve, each with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import visionkit
from visionkit.errors import VisionkitDeprecationWarning

DEPRECATED = [
    ("visionkit.engine.metrics", "Metric", "visionkit.engine.contracts"),
    ("visionkit.engine.metrics", "facts_kwargs", "visionkit.data.facts"),
    ("visionkit.engine.metrics", "batch_size_of", "visionkit.data.batches"),
    ("visionkit.engine.callbacks", "Callback", "visionkit.engine.events"),
    ("visionkit.engine.callbacks", "LoopState", "visionkit.engine.events"),
    ("visionkit.engine.callbacks", "CSVLogger", "visionkit.engine.loggers"),
]


def test_every_public_name_resolves() -> None:
    assert visionkit.PLUGIN_API == "2.0"
    for name in visionkit.__all__:
        assert getattr(visionkit, name) is not None, name
    assert visionkit.Task.__module__ == "visionkit.engine.contracts"
    assert issubclass(visionkit.Metric, importlib.import_module("torchmetrics").Metric)


@pytest.mark.parametrize(("module", "name", "home"), DEPRECATED)
def test_an_earlier_name_warns_and_is_the_same_object(module: str, name: str, home: str) -> None:
    with pytest.warns(VisionkitDeprecationWarning, match=f"{module}.{name} moved"):
        old = getattr(importlib.import_module(module), name)
    assert old is getattr(importlib.import_module(home), name)


def test_import_visionkit_does_not_import_torch() -> None:
    code = "import sys, visionkit; visionkit.MODELS; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
