"""visionkit: one registry-driven core that trains and runs image models for many tasks."""

import os

# albumentations asks a web server for its latest version at import time; visionkit never goes online unasked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from visionkit.api import dry_run, evaluate, load_model, predict, train
from visionkit.config import load_config
from visionkit.registry import DATASETS, LOSSES, METRICS, MODELS, TASKS, TRANSFORMS, Registry
from visionkit.tasks.base import OptimizerGroup, StepContext, Task

__version__ = "0.1.0"
__all__ = [
    "DATASETS",
    "LOSSES",
    "METRICS",
    "MODELS",
    "TASKS",
    "TRANSFORMS",
    "OptimizerGroup",
    "Registry",
    "StepContext",
    "Task",
    "dry_run",
    "evaluate",
    "load_config",
    "load_model",
    "predict",
    "train",
    "__version__",
]
