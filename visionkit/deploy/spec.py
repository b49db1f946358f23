"""Earlier home of the export signature: the names live in `visionkit.engine.export_spec` now (tasks declare
their export there, below the deploy layer); they stay importable from here."""

from __future__ import annotations

from visionkit.engine.export_spec import CheckRow, ExportOptions, ExportSpec, TensorInfo, image_of, image_spec
from visionkit.engine.precision import device_of
from visionkit.errors import EXTRAS, require

__all__ = [
    "EXTRAS",
    "CheckRow",
    "ExportOptions",
    "ExportSpec",
    "TensorInfo",
    "device_of",
    "image_of",
    "image_spec",
    "require",
]
