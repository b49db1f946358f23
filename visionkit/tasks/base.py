"""The Task interface: everything the task-agnostic trainer needs to know about one kind of problem."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate


@dataclass
class StepContext:
    """What a task sees during a step: the model to call, the plain module, and where the run is."""

    model: nn.Module  # call this for forward passes (it may be DDP- or compile-wrapped)
    module: nn.Module  # the plain model, for submodules and attributes
    device: torch.device
    optimizer: str = "main"  # the optimizer this training step is for
    step: int = 0  # optimizer updates done so far
    epoch: int = 0
    autocast: Any = None  # a context-manager factory with the run's precision, for tasks that need it
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerGroup:
    """Parameters trained by one optimizer, with config keys that override the `optimizer` section."""

    params: Iterable[nn.Parameter]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    every: int = 1  # step this optimizer on every n-th update (e.g. a generator stepped less often)


class Task:
    """Base class for tasks; subclasses register with `@TASKS.register("name", aliases=[...])`.

    Override the builders and steps; the trainer owns devices, precision, scaling, accumulation,
    clipping, EMA, checkpoints, distributed reduction of gradients and all file output.
    """

    name: ClassVar[str] = ""
    monitor: ClassVar[str] = "val/loss"  # metric used for best checkpoint and early stopping
    monitor_mode: ClassVar[str] = "min"  # "min" or "max"
    defaults: ClassVar[dict[str, Any]] = {}  # task config defaults; their keys extend the schema
    find_unused_parameters: ClassVar[bool] = False  # DDP flag for tasks that skip parameters

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def scopes(self) -> list[str]:
        """Task names whose registered components this task uses: its own, then its base tasks'."""
        names = [c.__dict__["name"] for c in type(self).__mro__ if c.__dict__.get("name")]
        return list(dict.fromkeys(names))

    def dataset_scopes(self) -> list[str]:
        """Task names whose datasets this task reads (override to borrow, e.g. classification's)."""
        return self.scopes()

    # -- config ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check component specs (model, datasets, loss) before anything is built; raise ConfigError."""
        from visionkit.registry import DATASETS, LOSSES, MODELS

        cfg = self.cfg
        check_spec(MODELS, cfg.get("model"), "model", self.model_defaults(), self.scopes())
        for split in ("train", "val"):
            if cfg["data"].get(split) is not None:
                check_spec(
                    DATASETS, cfg["data"][split], f"data.{split}", self.dataset_defaults(split), self.dataset_scopes()
                )
        if cfg.get("loss") is not None:
            check_spec(LOSSES, cfg["loss"], "loss", self.loss_defaults(), self.scopes())

    def model_defaults(self) -> dict[str, Any]:
        """Keyword arguments offered to every model builder of this task (e.g. num_classes)."""
        return {}

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Keyword arguments offered to every dataset builder (e.g. split, transforms)."""
        return {}

    def loss_defaults(self) -> dict[str, Any]:
        """Keyword arguments offered to every loss builder."""
        return {}

    # -- builders -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """Build the model from `cfg.model`."""
        from visionkit.registry import MODELS

        return MODELS.build(self.cfg["model"], key="model", task=self.scopes(), **self.model_defaults())

    def build_dataset(self, split: str) -> Dataset:
        """Build the `train` or `val` dataset from `cfg.data.<split>` (called before `build_model`).

        A task may record what the data tells (class names, channels) in `self.cfg` here: the trainer
        writes the config after building the datasets, so checkpoints carry it for eval and predict.
        """
        from visionkit.registry import DATASETS

        return DATASETS.build(
            self.cfg["data"][split], key=f"data.{split}", task=self.dataset_scopes(), **self.dataset_defaults(split)
        )

    def build_loss(self) -> nn.Module | None:
        """Build the loss from `cfg.loss` (None when the model computes its own)."""
        from visionkit.registry import LOSSES

        spec = self.cfg.get("loss")
        return None if spec is None else LOSSES.build(spec, key="loss", task=self.scopes(), **self.loss_defaults())

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once the model is on its device; build losses and metrics here."""
        self.loss_fn = self.build_loss()
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(device)

    def collate(self, samples: list[Any]) -> Any:
        """Turn a list of samples into a batch."""
        return default_collate(samples)

    def optimizer_groups(self, model: nn.Module) -> dict[str, OptimizerGroup]:
        """Name each optimizer and its parameters; one optimizer called 'main' by default."""
        return {"main": OptimizerGroup([p for p in model.parameters() if p.requires_grad])}

    # -- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor] | None:
        """Return named losses for `ctx.optimizer`; the trainer backpropagates `"loss"`. None skips."""
        raise NotImplementedError

    def reset_metrics(self) -> None:
        """Start a fresh validation pass."""

    def validation_step(self, batch: Any, ctx: StepContext) -> None:
        """Update the task's metric state with one batch."""
        raise NotImplementedError

    def compute_metrics(self) -> dict[str, float]:
        """Metrics over the whole validation set, reduced across ranks (see engine.distributed)."""
        return {}

    def on_validation_end(self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int) -> None:
        """Write visual samples and reports into `run_dir` (called on rank 0 only)."""

    def summary_extras(self) -> dict[str, Any]:
        """Extra entries for summary.json (e.g. per-class tables) from the last validation."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Task state to checkpoint besides the model (e.g. a private RNG); tensors and plain types only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, when a run resumes."""

    def move_to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to the device (tensors anywhere inside lists, tuples and dicts)."""
        return to_device(batch, device)

    # -- inference ------------------------------------------------------------------------------
    def predict_files(
        self, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]
    ) -> dict[str, Any]:
        """Run the model on files (or, for generation, sample), write results into out_dir, return them."""
        raise NotImplementedError(f"task {self.name!r} does not implement predict")


def check_spec(registry: Any, spec: Any, key: str, defaults: Mapping[str, Any], task: Any = None) -> None:
    """Check a `{name: ..., **kwargs}` spec against its registered builder without building it."""
    from visionkit.errors import ConfigError
    from visionkit.registry import check_kwargs

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or not spec.get("name"):
        raise ConfigError(f"'{key}' must be a mapping with a 'name' key (e.g. {key}.name=...), got {spec!r}.")
    builder = registry.get(spec["name"], task or None)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    check_kwargs(builder, {**defaults, **kwargs}, f"{key} '{spec['name']}'", user_keys=set(kwargs))


def to_device(obj: Any, device: torch.device) -> Any:
    """Recursively move tensors to `device` (non-blocking)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
