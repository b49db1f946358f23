"""visionkit: one registry-driven core that trains and runs image models for many tasks.

The plugin API (`PLUGIN_API`): the registries, `Task`, `StepContext`, `OptimizerGroup`, `Metric`, `Callback`,
`LoopState`, `DataFacts` and the export signature (`ExportSpec`, `ExportOptions`, `TensorInfo`, `image_spec`);
docs/plugins.md documents them. The Python API: `train`, `dry_run`, `evaluate`, `predict`, `load_model`,
`load_config`.

Names that need torch are imported on first use (PEP 562), so that `import visionkit` and `visionkit --help`
cost a tenth of a second (4.6 s when this file imported the whole library; docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# albumentations asks a web server for its latest version at import time; visionkit never goes online unasked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from visionkit import plugins as _plugins  # noqa: E402,F401 - installs plugin discovery before any registry lookup
from visionkit.registry import (  # noqa: E402
    CALLBACKS,
    DATASETS,
    LOSSES,
    METRICS,
    MODELS,
    TASKS,
    TRANSFORMS,
    Registry,
)
from visionkit.version import PLUGIN_API, __version__  # noqa: E402

if TYPE_CHECKING:
    from visionkit.api import dry_run, evaluate, load_config, load_model, predict, train
    from visionkit.data.facts import DataFacts
    from visionkit.engine.contracts import Callback, LoopState, Metric, OptimizerGroup, StepContext, Task
    from visionkit.engine.export_spec import ExportOptions, ExportSpec, TensorInfo, image_spec

_LAZY = {
    **dict.fromkeys(("dry_run", "evaluate", "load_config", "load_model", "predict", "train"), "visionkit.api"),
    **dict.fromkeys(
        ("Callback", "LoopState", "Metric", "OptimizerGroup", "StepContext", "Task"), "visionkit.engine.contracts"
    ),
    "DataFacts": "visionkit.data.facts",  # needs no torch
    **dict.fromkeys(("ExportOptions", "ExportSpec", "TensorInfo", "image_spec"), "visionkit.engine.export_spec"),
}
_SUBPACKAGES = ("api", "cli", "config", "data", "deploy", "engine", "errors", "plugins", "registry", "tasks", "tune")


def __getattr__(name: str) -> Any:
    """The public names that need torch, and the subpackages, imported when first asked for."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"visionkit.{name}")
    raise AttributeError(f"module 'visionkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Every public name, loaded or not."""
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CALLBACKS",
    "DATASETS",
    "LOSSES",
    "METRICS",
    "MODELS",
    "PLUGIN_API",
    "TASKS",
    "TRANSFORMS",
    "Callback",
    "DataFacts",
    "ExportOptions",
    "ExportSpec",
    "LoopState",
    "Metric",
    "OptimizerGroup",
    "Registry",
    "StepContext",
    "Task",
    "TensorInfo",
    "dry_run",
    "evaluate",
    "image_spec",
    "load_config",
    "load_model",
    "predict",
    "train",
    "__version__",
]
