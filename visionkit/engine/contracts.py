"""The contracts between the core and a task, in one place: what a plugin implements and what it is handed.

`Task` (a task's whole interface), `StepContext` (what a step sees), `OptimizerGroup` (one optimizer's
parameters), `Metric` (the validation metric protocol); `Callback` and `LoopState` (the loop's events,
`visionkit.engine.events`) and `DataFacts` (the record of what the data tells, `visionkit.data.facts`) are
re-exported here. `visionkit` exports all of them as the plugin API (`visionkit.PLUGIN_API`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchmetrics
from torch import nn
from torch.utils.data import Dataset, default_collate

from visionkit.data.batches import batch_size_of, to_device
from visionkit.data.facts import DataFacts, declared_facts, facts_kwargs, facts_of, resolve_facts
from visionkit.data.images import read_image, to_tensor
from visionkit.data.transforms import build_pipeline
from visionkit.engine.events import Callback, LoopState
from visionkit.engine.finetune import frozen_parameters, validate_finetune
from visionkit.engine.precision import device_of
from visionkit.errors import ConfigError
from visionkit.registry import CALLBACKS, DATASETS, LOSSES, METRICS, MODELS, Registry
from visionkit.signatures import check_kwargs

__all__ = ["Callback", "DataFacts", "LoopState", "Metric", "OptimizerGroup", "StepContext", "Task"]


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


class Metric(torchmetrics.Metric):
    """Base class of visionkit metrics: `update(outputs)` reads a validation step's outputs by key.

    A `torchmetrics.Metric`: states reduce across ranks one way and `compute()` is cached. `compute()`
    returns a dict: numbers become `val/<key>` scalars, anything else (tables, lists) goes to summary.json.
    """

    full_state_update = False
    inputs: tuple[str, ...] = ()  # keys of the validation step's outputs this metric reads

    def update(self, outputs: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Add one batch of a validation step's outputs."""
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """Scores over everything added since the last reset, reduced over every rank."""
        raise NotImplementedError


class Task:
    """Base class for tasks; subclasses register with `@TASKS.register("name", aliases=[...])`.

    A task says what is special about its problem: builders, the training step, what a validation step
    hands to the metrics, and prediction's pre/post-processing and drawing. The core owns the loop,
    devices, precision, data facts, metric reduction, validation-loss averaging, checkpoints, callbacks,
    input walking and every file the run or a prediction writes.
    """

    name: ClassVar[str] = ""
    monitor: ClassVar[str] = "val/loss"  # default metric for best checkpoint and early stopping
    monitor_mode: ClassVar[str] = "min"  # "min" or "max"; `trainer.monitor(_mode)` override both
    defaults: ClassVar[dict[str, Any]] = {}  # task config defaults (incl. `metrics:`); their keys extend the schema
    find_unused_parameters: ClassVar[bool] = False  # DDP flag for tasks that skip parameters
    predict_options: ClassVar[dict[str, Any]] = {}  # accepted predict options and their defaults
    predict_stack: ClassVar[bool] = True  # False: `predict_batch` gets lists of any-size inputs

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.facts = DataFacts()  # set by the core: from the data when training, from the checkpoint after

    def scopes(self) -> list[str]:
        """Task names whose registered components this task uses: its own, then its base tasks'."""
        names = [c.__dict__["name"] for c in type(self).__mro__ if c.__dict__.get("name")]
        return list(dict.fromkeys(names))

    def dataset_scopes(self) -> list[str]:
        """Task names whose datasets this task reads (override to borrow, e.g. classification's)."""
        return self.scopes()

    # -- config ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check component specs (model, datasets, loss, metrics, callbacks) before anything is built."""
        cfg = self.cfg
        declared_facts(cfg["data"])  # declared facts have the right shape
        # Facts are known only once the data is read: stand-ins let builders that require them pass the check.
        known = {k: v if v is not None else "<from the data>" for k, v in self.model_defaults(self.facts).items()}
        check_spec(MODELS, builder_spec(cfg.get("model")), "model", known, self.scopes())
        validate_finetune(cfg)  # model.freeze and trainer.unfreeze_at
        for split in ("train", "val"):
            if cfg["data"].get(split) is not None:
                check_spec(
                    DATASETS, cfg["data"][split], f"data.{split}", self.dataset_defaults(split), self.dataset_scopes()
                )
        if cfg.get("loss") is not None:
            check_spec(LOSSES, cfg["loss"], "loss", self.loss_defaults(), self.scopes())
        for i, spec in enumerate(cfg.get("metrics") or []):
            offered = {
                k: v if v is not None else "<from the data>" for k, v in self.metric_defaults(self.facts).items()
            }
            check_spec(METRICS, spec, f"metrics[{i}]", offered, self.scopes())
        if not isinstance(cfg.get("callbacks") or [], list):
            raise ConfigError(f"'callbacks' must be a list of {{name: ...}} entries, got {cfg['callbacks']!r}.")
        for i, spec in enumerate(cfg.get("callbacks") or []):
            check_spec(CALLBACKS, spec, f"callbacks[{i}]", {}, self.scopes())

    def model_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """Keyword arguments offered to every model builder: the data facts (override to add or rename)."""
        return facts_kwargs(facts)

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Keyword arguments offered to every dataset builder (e.g. split, transforms)."""
        return {"split": split}

    def loss_defaults(self) -> dict[str, Any]:
        """Keyword arguments offered to every loss builder."""
        return {}

    def metric_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """Keyword arguments offered to every metric builder: the data facts."""
        return facts_kwargs(facts)

    # -- data facts -----------------------------------------------------------------------------
    def data_facts(self, train: Dataset | None, val: Dataset | None) -> DataFacts:
        """Facts for the model and the tools: declared `data:` keys win, the training data fills the rest."""
        return resolve_facts(declared_facts(self.cfg["data"]), facts_of(train), facts_of(val) if val else None)

    # -- builders -------------------------------------------------------------------------------
    def build_model(self, facts: DataFacts) -> nn.Module:
        """Build the model from `cfg.model`, offering the data facts as defaults."""
        spec = builder_spec(self.cfg["model"])
        return MODELS.build(spec, key="model", task=self.scopes(), **self.model_defaults(facts))

    def build_dataset(self, split: str) -> Dataset:
        """Build the `train` or `val` dataset from `cfg.data.<split>`."""
        return DATASETS.build(
            self.cfg["data"][split], key=f"data.{split}", task=self.dataset_scopes(), **self.dataset_defaults(split)
        )

    def build_loss(self) -> nn.Module | None:
        """Build the loss from `cfg.loss` (None when the model computes its own)."""
        spec = self.cfg.get("loss")
        return None if spec is None else LOSSES.build(spec, key="loss", task=self.scopes(), **self.loss_defaults())

    def build_metrics(self, facts: DataFacts) -> list[Metric]:
        """Build the `metrics:` list from the METRICS registry, offering the data facts."""
        return build_metrics(self.cfg.get("metrics"), self.scopes(), self.metric_defaults(facts))

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once the model is on its device (after `self.facts` is set); build losses here."""
        self.loss_fn = self.build_loss()
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(device)

    def collate(self, samples: list[Any]) -> Any:
        """Turn a list of samples into a batch."""
        return default_collate(samples)

    def optimizer_groups(self, model: nn.Module) -> dict[str, OptimizerGroup]:
        """Name each optimizer and its parameters; one optimizer called 'main' by default.

        Parameters frozen by `model.freeze` are included (they get no gradient while frozen, and
        `trainer.unfreeze_at` trains them with the same optimizer); those the model froze itself are not.
        """
        frozen = {id(p) for p in frozen_parameters(model)}
        return {"main": OptimizerGroup([p for p in model.parameters() if p.requires_grad or id(p) in frozen])}

    # -- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor] | None:
        """Return named losses for `ctx.optimizer`; the trainer backpropagates `"loss"`. None skips the update."""
        raise NotImplementedError

    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, Any] | None:
        """Outputs of one validation batch for the metrics (and `loss`, the batch mean, for val/loss)."""
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        """Samples in a batch (weights the validation loss); the first tensor's dim 0 by default."""
        return batch_size_of(batch)

    def on_validation_end(
        self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int, results: dict[str, Any]
    ) -> None:
        """Write visual samples and reports into `run_dir` (rank 0 only); `results` holds metrics and extras."""

    def state_dict(self) -> dict[str, Any]:
        """Task state to checkpoint besides the model (e.g. a private RNG); tensors and plain types only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, when a run resumes."""

    def move_to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to the device (tensors anywhere inside lists, tuples and dicts)."""
        return to_device(batch, device)

    # -- prediction (the core predictor walks, reads, batches and writes; see engine/predictor.py) ----
    def read_input(self, path: Path, options: dict[str, Any]) -> Any:
        """The raw input for one file (an HWC uint8 image by default); None skips the file."""
        return read_image(path, self.facts.channels)

    def from_frame(self, image: np.ndarray, options: dict[str, Any]) -> Any:
        """What `read_input` would give for an image decoded elsewhere (a video frame, a served upload)."""
        return image

    def preprocess(self, image: np.ndarray, options: dict[str, Any]) -> Any:
        """An HWC uint8 image -> the model's input: `data.val_transforms`, then normalisation by the facts."""
        if not hasattr(self, "_val_pipeline"):
            self._val_pipeline = build_pipeline(self.cfg["data"].get("val_transforms"), key="data.val_transforms")
        image = self._val_pipeline(image=image)["image"]
        return to_tensor(image, self.facts.mean, self.facts.std)

    def predict_batch(self, model: nn.Module, inputs: list[Any], options: dict[str, Any]) -> list[Any]:
        """Run the model on a batch of preprocessed inputs; one output per input."""
        return list(model(torch.stack(inputs).to(device_of(model))))

    def postprocess(self, output: Any, image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """One input's JSON record for predictions.json (plain types). Tasks that predict implement this."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, output: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Pictures of one prediction, by kind (e.g. {"overlays": image}); saved as <kind>/<input path>.png."""
        return {}

    def finish_predictions(self, records: list[dict[str, Any]], out_dir: Path, options: dict[str, Any]) -> dict:
        """Write task-wide prediction files (e.g. COCO results) once every input is done; return extra info."""
        return {}

    def describe(self, record: dict[str, Any]) -> str:
        """A few words on one input's record for the per-input line of `predict` (e.g. '2 cat, 1 dog')."""
        return ""

    def sample(self, model: nn.Module, out_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
        """Predict without inputs (generative tasks): write samples into out_dir and return what was written."""
        raise NotImplementedError

    # -- export (tools/export.py; see visionkit/deploy/) -----------------------------------------
    def export_spec(self, model: nn.Module, options: Any) -> Any:
        """The module, inputs and outputs to export (a `visionkit.engine.export_spec.ExportSpec`); None: none."""
        return None

    def exported_model(self, session: Any, sidecar: dict[str, Any]) -> Any:
        """A stand-in for the eager model in `predict_batch`, running an exported file's `session`."""
        return ExportedModel(session, sidecar)


class ExportedModel(nn.Module):
    """The eager model's stand-in for image-in, tensor-out tasks: `forward(x)` is the exported first output.

    `session.run(*tensors)` returns the exported outputs (onnxruntime or TorchScript, see visionkit.deploy).
    Inputs larger than a fixed export batch are run in chunks; an export with `--softmax` returns
    log-probabilities, so code that applies softmax or argmax to logits gets the same answer.
    """

    def __init__(self, session: Any, sidecar: dict[str, Any]) -> None:
        super().__init__()
        self.session = session
        batch = sidecar["inputs"][0]["shape"][0]
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.probabilities = bool(sidecar.get("export", {}).get("softmax"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The exported model's first output for a batch of preprocessed inputs."""
        step = self.fixed_batch or x.shape[0]
        parts = [self.session.run(x[i : i + step])[0] for i in range(0, x.shape[0], step)]
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.clamp_min(1e-30).log() if self.probabilities else out


def build_metrics(specs: Sequence[Any] | None, scopes: Sequence[str], offered: Mapping[str, Any]) -> list[Metric]:
    """Build each `metrics:` entry (a name or {name: ..., options}) from the METRICS registry."""
    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(
            f"'metrics' must be a list of metric names or {{name: ..., options}} mappings, got {specs!r}."
        )
    metrics = []
    for i, spec in enumerate(specs):
        name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, Mapping) else spec
        try:
            metric = METRICS.build(spec, key=f"metrics[{i}]", task=list(scopes), **offered)
        except (TypeError, ValueError) as exc:  # a builder's own check of its options
            raise ConfigError(f"metrics[{i}] '{name}' cannot be built with these options: {exc}") from exc
        if not isinstance(metric, torchmetrics.Metric):
            raise ConfigError(
                f"metric '{name}' built a {type(metric).__name__}, not a visionkit.Metric "
                "(a torchmetrics.Metric whose update takes the validation step's output dict)."
            )
        metrics.append(metric)
    return metrics


def check_spec(registry: Registry, spec: Any, key: str, defaults: Mapping[str, Any], task: Any = None) -> None:
    """Check a `{name: ..., **kwargs}` spec against its registered builder without building it."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or not spec.get("name"):
        raise ConfigError(f"'{key}' must be a mapping with a 'name' key (e.g. {key}.name=...), got {spec!r}.")
    builder = registry.get(spec["name"], task or None)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    check_kwargs(builder, {**defaults, **kwargs}, f"{key} '{spec['name']}'", user_keys=set(kwargs))


def builder_spec(spec: Any) -> Any:
    """The model spec as its builder takes it: without `freeze`, which the trainer applies (engine/finetune.py)."""
    if isinstance(spec, Mapping) and "freeze" in spec:
        return {k: v for k, v in spec.items() if k != "freeze"}
    return spec
