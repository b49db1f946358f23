"""Building a task from its config: the class from the registry, checked against the protocol, then validated.

A task class implements the current protocol (`visionkit.Task`, `visionkit.PLUGIN_API` 2.0), or the earlier
one (1.0: `reset_metrics()`, a `validation_step` that updates the task's own state, `compute_metrics()`,
`summary_extras()`, `build_model()` and `model_defaults()` without the data facts, `on_validation_end` without
results, `predict_files`). An earlier-protocol task runs through an adapter with one DeprecationWarning per
class; a class the core cannot use is a PluginError naming what is missing, before anything is built.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from visionkit.data.facts import DataFacts, facts_kwargs
from visionkit.engine.contracts import StepContext, Task
from visionkit.engine.optim import validate_optimizer, validate_scheduler
from visionkit.errors import PluginError, VisionkitDeprecationWarning
from visionkit.registry import TASKS
from visionkit.version import PLUGIN_API

EARLIER_METHODS = ("reset_metrics", "compute_metrics", "summary_extras", "predict_files")
_adapted: dict[type, type] = {}


def build_task(cfg: dict[str, Any], validate: bool = True) -> Task:
    """The config's task, built from the TASKS registry and (by default) validated: the optimizer and schedule
    sections by the core, the component specs (and model.freeze) by `Task.validate`."""
    cls = task_class(cfg["task"])
    task = cls(cfg)  # a class may build a subclass (e.g. generation builds its model family's task)
    where = f"Task '{cfg['task']}' ({type(task).__module__}.{type(task).__qualname__})"
    if _own(type(task), "training_step") is None:
        raise PluginError(
            f"{where} does not implement training_step(batch, ctx), which returns the losses to train "
            f"(plugin API {PLUGIN_API}, docs/plugins.md)."
        )
    if cfg["data"].get("val") is not None and _own(type(task), "validation_step") is None:
        raise PluginError(
            f"{where} does not implement validation_step(batch, ctx), which returns what the metrics read, but "
            f"the config has data.val. Implement it (plugin API {PLUGIN_API}, docs/plugins.md), or set data.val=null."
        )
    if validate:
        validate_optimizer(cfg["optimizer"])
        validate_scheduler(cfg["scheduler"])
        task.validate()
    return task


def task_class(name: str) -> type[Task]:
    """The registered class of a task name or alias, adapted when it implements the earlier protocol."""
    cls = TASKS.get(name)
    if cls in _adapted:
        return _adapted[cls]
    where = f"Task '{name}' ({getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)})"
    if not (inspect.isclass(cls) and issubclass(cls, Task)):
        raise PluginError(
            f"{where} is not a subclass of visionkit.Task, so the core cannot run it. Subclass visionkit.Task "
            f"(plugin API {PLUGIN_API}, docs/plugins.md) and register the class with TASKS.register."
        )
    earlier = earlier_protocol(cls)
    if not earlier:
        return cls
    warnings.warn(
        f"{where} implements the earlier task protocol ({', '.join(earlier)}); it runs through an adapter for "
        f"now, which a later release removes. Move it to plugin API {PLUGIN_API}: validation_step returns its "
        "outputs for the metrics listed under `metrics:` (visionkit.Metric), and build_model/model_defaults take "
        "the data facts (docs/plugins.md, 'Write a new task').",
        VisionkitDeprecationWarning,
        stacklevel=3,
    )
    return adapted_class(cls)


def adapted_class(cls: type) -> type[Task]:
    """The earlier-protocol class `cls` behind the adapter (made once per process)."""
    if cls not in _adapted:
        attrs = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "earlier_class": cls}
        _adapted[cls] = type(cls.__name__, (EarlierTaskAdapter, cls), attrs)
    return _adapted[cls]


def earlier_protocol(cls: type) -> list[str]:
    """What marks a class as written against the earlier protocol (empty for the current one)."""
    marks = [m for m in EARLIER_METHODS if _own(cls, m) is not None]
    for method in ("build_model", "model_defaults"):
        fn = _own(cls, method)
        if fn is not None and len(inspect.signature(fn).parameters) == 1:  # (self) only: no data facts
            marks.append(f"{method}() without facts")
    fn = _own(cls, "on_validation_end")
    if fn is not None and len(inspect.signature(fn).parameters) == 5:  # (self, ctx, dataset, run_dir, epoch)
        marks.append("on_validation_end() without results")
    return marks


def _own(cls: type, name: str) -> Any:
    """The method `name` as a subclass of Task defines it (None when only the base class has it)."""
    for klass in cls.__mro__:
        if klass is Task:
            return None
        if klass is not EarlierTaskAdapter and name in vars(klass):
            return vars(klass)[name]
    return None


class EarlierMetrics:
    """The evaluator's view of an earlier-protocol task: reset and compute call the task's own methods."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def to(self, device: Any) -> EarlierMetrics:
        """Metric state lives in the task."""
        return self

    def reset(self) -> None:
        """`task.reset_metrics()`."""
        if hasattr(self.task, "reset_metrics"):
            self.task.reset_metrics()

    def update(self, outputs: Mapping[str, Any]) -> None:
        """Nothing: the task's validation_step updated its own state."""

    def compute(self) -> dict[str, Any]:
        """`task.compute_metrics()` (its `val/` prefixes dropped: the evaluator adds them) and `summary_extras()`."""
        metrics = self.task.compute_metrics() if hasattr(self.task, "compute_metrics") else {}
        out: dict[str, Any] = {str(k).removeprefix("val/"): v for k, v in metrics.items()}
        if hasattr(self.task, "summary_extras"):
            out.update(self.task.summary_extras() or {})
        return out


class EarlierTaskAdapter(Task):
    """Mixed in before an earlier-protocol task class: presents it to the core as a current task."""

    earlier_class: ClassVar[type]  # the task's own class

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the task's own class and adapted again when loaded (e.g. in a spawned loader worker)."""
        return (_rebuild_adapted, (self.earlier_class, self.__dict__))

    def model_defaults(self, facts: DataFacts | None = None) -> dict[str, Any]:
        """The data facts, with the task's own `model_defaults()` winning where it gives a value (its own code
        calls it without facts: then its values alone)."""
        parent = super().model_defaults
        own = parent() if _takes_no_facts(parent) else parent(facts if facts is not None else self.facts)
        if facts is None:
            return own
        return {**facts_kwargs(facts), **{k: v for k, v in (own or {}).items() if v is not None}}

    def build_model(self, facts: DataFacts | None = None) -> nn.Module:
        """The task's own `build_model()` (which read its config), or the current builder."""
        parent = super().build_model
        return parent() if _takes_no_facts(parent) else parent(facts if facts is not None else self.facts)

    def build_metrics(self, facts: DataFacts) -> list[Any]:
        """The task's own metric state behind the evaluator, plus any `metrics:` from the config."""
        return [EarlierMetrics(self), *super().build_metrics(facts)]

    def on_validation_end(
        self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int, results: dict[str, Any]
    ) -> None:
        """The task's own hook, called without `results` when it takes none."""
        parent = super().on_validation_end
        if len(inspect.signature(parent).parameters) == 4:
            parent(ctx, dataset, run_dir, epoch)
        else:
            parent(ctx, dataset, run_dir, epoch, results)

    def predict_earlier(self, model: nn.Module, inputs: list[str], out_dir: Path, options: dict[str, Any]) -> Any:
        """Prediction through the task's own `predict_files` (None when it has none: the core predictor runs)."""
        if not hasattr(super(), "predict_files"):
            return None
        with torch.no_grad():
            return super().predict_files(model, [Path(i) for i in inputs], out_dir, dict(options))  # type: ignore[misc]


def _rebuild_adapted(cls: type, state: dict[str, Any]) -> Task:
    """An adapted task from its pickled state."""
    task = object.__new__(adapted_class(cls))
    task.__dict__.update(state)
    return task


def _takes_no_facts(bound: Any) -> bool:
    """True for a bound method that takes no argument (the earlier builders)."""
    return len(inspect.signature(bound).parameters) == 0
