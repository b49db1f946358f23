"""Example visionkit plugin: a whole new task, `restoration` (alias `restore`), for denoising and 2x upscaling.

visionkit imports this module through the `visionkit.plugins` entry point (see pyproject.toml); importing
it registers the task, its dataset, model, losses and metrics.
"""

from __future__ import annotations

from visionkit_restoration import data, metrics, models, task  # noqa: F401 - imported to register
from visionkit_restoration.task import RestorationTask

__all__ = ["RestorationTask"]
