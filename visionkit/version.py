"""The version of visionkit and of its plugin API, in a module of its own so that reading them imports nothing else."""

from __future__ import annotations

__version__ = "0.1.0"

# The plugin API: Task, StepContext, OptimizerGroup, Metric, Callback, LoopState, DataFacts and the registries,
# importable from `visionkit` (docs/plugins.md). 1.0 was the task protocol before the core services (reset_metrics,
# compute_metrics, predict_files); tasks written against it still run, with a DeprecationWarning.
PLUGIN_API = "2.0"
