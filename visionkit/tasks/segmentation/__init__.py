"""Semantic segmentation: importing this package registers its task, models, datasets, losses and metrics."""

from __future__ import annotations

from visionkit.tasks.segmentation import coco, datasets, losses, metrics, models, shapes, task  # noqa: F401
from visionkit.tasks.segmentation.task import SegmentationTask

__all__ = ["SegmentationTask"]
