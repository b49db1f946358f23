"""The Task interface, re-exported for plugins written against this module: it lives in
`visionkit.engine.contracts` (the engine owns the contracts it consumes) and is public as `visionkit.Task`."""

from __future__ import annotations

from visionkit.data.batches import to_device
from visionkit.engine.contracts import (
    DataFacts,
    ExportedModel,
    Metric,
    OptimizerGroup,
    StepContext,
    Task,
    builder_spec,
    check_spec,
)

__all__ = [
    "DataFacts",
    "ExportedModel",
    "Metric",
    "OptimizerGroup",
    "StepContext",
    "Task",
    "builder_spec",
    "check_spec",
    "to_device",
]
