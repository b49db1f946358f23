"""The generation task: what GAN and diffusion training share, and the choice between them.

`generation` (alias `gen`) is registered once. Building it picks the subclass for the model's family,
which the model's MODELS registration declares (`metadata={"family": "diffusion"}` / `{"family": "gan"}`):
`TASKS.get("generation")(cfg)` is a `DiffusionTask` or a `GANTask`. Every class keeps the name
`generation`, so configs, checkpoints and registry scopes stay the same.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from visionkit.data.facts import DataFacts
from visionkit.engine import distributed as dist
from visionkit.engine.contracts import StepContext, Task
from visionkit.errors import ConfigError
from visionkit.registry import MODELS, TASKS
from visionkit.tasks.generation.datasets import HALF, RepeatedDataset
from visionkit.tasks.generation.inference import class_labels
from visionkit.tasks.generation.visualize import save_grid, save_images

FAMILIES: dict[str, type[GenerationTask]] = {}  # model family -> task class, filled by subclasses


@TASKS.register("generation", aliases=["gen"])
class GenerationTask(Task):
    """Unconditional or class-conditional image generation; `GenerationTask(cfg)` builds the family's task."""

    name = "generation"
    family: ClassVar[str] = ""  # the MODELS metadata family a subclass trains
    monitor = "val/fd"
    monitor_mode = "min"
    sampling_keys: ClassVar[tuple[str, ...]] = ()  # predict options that override sampling settings
    predict_options: ClassVar[dict[str, Any]] = {
        "num_samples": 64,
        "seed": 0,
        "labels": None,  # conditional models: a class index or a list cycled (null: cycle over all classes)
        "nrow": None,  # images per grid row (null: one row per class for conditional models)
        "batch_size": 64,
    }
    defaults = {
        "model": {"name": "ddpm"},
        "data": {
            "train": {"name": "digits"},
            "val": {"name": "digits"},
            "image_size": 32,
            "channels": None,  # declare to override the data (null: from the training set)
            "num_classes": None,  # declare to override the data (null: from the training set; 0 unlabelled)
            "class_names": None,
            "repeat": 1,  # passes over the training set per epoch
        },
        "metrics": ["frechet_distance", "classifier_scores"],
        "generation": {
            "sampler": "ddpm",  # ddpm | ddim (diffusion only)
            "steps": 50,  # sampling steps for predict; validation uses eval_steps
            "eval_steps": 25,  # sampling steps for validation metrics and sample grids
            "eta": 0.0,  # DDIM stochasticity (0 = deterministic)
            "guidance": 1.0,  # classifier-free guidance scale (conditional diffusion; 1 = none)
            "seed": 0,  # fixed noise for validation samples and grids
            "grid_samples": 64,  # images in samples/epoch_XXX.png
            "eval_samples": None,  # cap on generated images per validation (null: one per val image)
            "feature_net": "pixels",  # pixels | timm/<arch> | path/to/classification/checkpoint.pt
            "feature_weights": None,  # local weights file for a timm feature net (e.g. Inception)
            "feature_size": None,  # input size for a timm feature net (default: its pretrained size)
            "classifier": None,  # classification checkpoint for confidence / class-consistency scores
            "lr_generator": None,  # GAN: learning rates of the two optimizers (null: optimizer.lr)
            "lr_discriminator": None,
        },
    }

    def __new__(cls, cfg: dict[str, Any]) -> GenerationTask:
        """The base class builds the task of the configured model's family."""
        if cls is GenerationTask:
            cls = family_task(cfg)
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that names its `family` becomes the task for that model family."""
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("family"):
            FAMILIES[cls.family] = cls

    # -- config ---------------------------------------------------------------------------------
    def dataset_scopes(self) -> list[str]:
        """Dataset lookups also see classification datasets (digits, image_folder, cifar10, mnist, csv)."""
        return [*self.scopes(), "classification"]

    def validate(self) -> None:
        """Check component specs, the generation section and the data range."""
        super().validate()
        g, d = self.cfg["generation"], self.cfg["data"]
        for key in ("steps", "eval_steps", "grid_samples", "eval_samples"):
            value = g[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                extra = " or null" if key == "eval_samples" else ""
                raise ConfigError(f"generation.{key} must be a positive integer{extra}, got {value!r}.")
        for key in ("image_size", "repeat"):
            if isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < 1:
                raise ConfigError(f"data.{key} must be a positive integer, got {d[key]!r}.")
        for split in ("train", "val"):
            spec = d.get(split)
            if isinstance(spec, dict) and ({"mean", "std"} & set(spec)):
                raise ConfigError(
                    f"data.{split} sets mean/std; generation always scales images to [-1, 1] "
                    "(mean=std=0.5). Remove them."
                )

    def model_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """Offer image_size, channels and num_classes (0 for unlabelled data) to every model builder."""
        return {
            "image_size": facts.image_size or self.cfg["data"]["image_size"],
            "channels": facts.channels or 3,
            "num_classes": facts.num_classes or 0,
        }

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Offer split, transforms, image size, channels and [-1, 1] scaling to every dataset builder."""
        d = self.cfg["data"]
        return {
            "split": split,
            "transforms": d[f"{split}_transforms"],
            "image_size": d["image_size"],
            "channels": d["channels"],
            "mean": HALF,
            "std": HALF,
        }

    def metric_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """The data facts, the `generation:` metric networks and what summary.json reports about them."""
        g = self.cfg["generation"]
        nets = {k: g[k] for k in ("feature_net", "feature_weights", "feature_size", "classifier")}
        return {**super().metric_defaults(facts), **nets, "report": self.measurement()}

    def measurement(self) -> dict[str, Any]:
        """How validation measures the samples (summary.json's `generation` section)."""
        g = self.cfg["generation"]
        return {"feature_net": g["feature_net"], "classifier": g["classifier"]}

    # -- builders -------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        """Build a dataset (checking metric files first) and repeat the training split `data.repeat` times."""
        dataset = super().build_dataset(split)
        if split == "train":
            self.check_metric_files()
            if self.cfg["data"]["repeat"] > 1:
                dataset = RepeatedDataset(dataset, self.cfg["data"]["repeat"])
        return dataset

    def check_metric_files(self) -> None:
        """Fail before training (not at the first validation) when a metric network's file is missing."""
        g = self.cfg["generation"]
        for key in ("classifier", "feature_weights"):
            if g[key] and not Path(g[key]).is_file():
                raise ConfigError(f"generation.{key} '{g[key]}' does not exist; give a local file.")
        spec = str(g["feature_net"] or "pixels")
        if spec != "pixels" and not spec.startswith("timm/") and not Path(spec).is_file():
            raise ConfigError(
                f"generation.feature_net '{spec}' is neither 'pixels', 'timm/<arch>' nor an existing "
                "classification checkpoint file."
            )

    # -- sampling -------------------------------------------------------------------------------
    def sampling_options(self, overrides: dict[str, Any] | None = None, evaluation: bool = False) -> dict[str, Any]:
        """Keyword arguments for `model.generate` from the config and `overrides` (none by default)."""
        return {}

    def generate(
        self,
        model: nn.Module,
        n: int,
        labels: torch.Tensor | None,
        generator: torch.Generator,
        evaluation: bool = False,
        **overrides: Any,
    ) -> torch.Tensor:
        """Sample `n` images in [-1, 1] (labels are ignored by unconditional models)."""
        if not getattr(model, "conditional", False):
            labels = None
        return model.generate(
            n, labels=labels, generator=generator, **self.sampling_options(overrides, evaluation)
        ).float()

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, Any] | None:
        """Generate as many images as the batch holds (same labels), from noise fixed per validation pass."""
        images, labels = batch
        g = self.cfg["generation"]
        state = ctx.extra.get("generation")
        if state is None:  # a new StepContext is a new validation pass: restart the fixed noise
            noise = torch.Generator().manual_seed(int(g["seed"]) + 1_000_003 * (dist.rank() + 1))
            state = ctx.extra["generation"] = {"noise": noise, "generated": 0}
        if g["eval_samples"] is not None:
            room = -(-g["eval_samples"] // dist.world_size()) - state["generated"]
            if room <= 0:
                return None
            images, labels = images[:room], labels[:room]
        model = ctx.module
        conditional = getattr(model, "conditional", False)
        if conditional and bool((labels < 0).any()):
            labels = torch.randint(0, model.num_classes, labels.shape, generator=state["noise"]).to(labels.device)
        fakes = self.generate(model, images.shape[0], labels if conditional else None, state["noise"], True)
        state["generated"] += images.shape[0]
        return {"real": images.float(), "fake": fakes, "labels": labels if conditional else None}

    def sample_grid(self, model: nn.Module, autocast: Any = None) -> tuple[torch.Tensor, int]:
        """The fixed-noise grid: for conditional models one row per class; returns (images, per row)."""
        g = self.cfg["generation"]
        n, labels, nrow = g["grid_samples"], None, None
        if getattr(model, "conditional", False):
            per_class = max(1, n // model.num_classes)
            labels = torch.arange(model.num_classes).repeat_interleave(per_class)
            n, nrow = len(labels), per_class
        was_training = model.training
        model.eval()  # sampling must not touch BatchNorm statistics (the model may be saved right after)
        try:
            with torch.no_grad(), autocast() if autocast is not None else contextlib.nullcontext():
                images = self.generate(model, n, labels, torch.Generator().manual_seed(int(g["seed"])), True)
        finally:
            model.train(was_training)
        return images, nrow or 0

    def on_validation_end(
        self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int, results: dict[str, Any]
    ) -> None:
        """Write the fixed-noise sample grid samples/epoch_XXX.png (EMA weights when kept)."""
        images, nrow = self.sample_grid(ctx.module, ctx.autocast)
        save_grid(images, Path(run_dir) / "samples" / f"epoch_{epoch:03d}.png", nrow or None)

    # -- prediction -----------------------------------------------------------------------------
    def sample(self, model: nn.Module, out_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
        """Write `num_samples` images to out_dir/samples/, a grid to out_dir/grid.png and predictions.json."""
        n, batch, seed = int(options["num_samples"]), int(options["batch_size"]), int(options["seed"])
        if n < 1 or batch < 1:
            raise ConfigError(f"num_samples and batch_size must be positive, got {n} and {batch}.")
        overrides = {k: options[k] for k in self.sampling_keys if options.get(k) is not None}
        sampling = self.sampling_options(overrides)  # checks the overrides before any work
        labels = class_labels(model, options["labels"], n)
        generator = torch.Generator().manual_seed(seed)
        images = []
        for start in range(0, n, batch):
            chunk = None if labels is None else labels[start : start + batch]
            images.append(self.generate(model, min(batch, n - start), chunk, generator, **overrides).cpu())
        samples = torch.cat(images)
        paths = save_images(samples, out_dir / "samples")
        nrow = options["nrow"]
        if nrow is None and labels is not None and n % model.num_classes == 0:
            nrow = model.num_classes
        grid = save_grid(samples, out_dir / "grid.png", int(nrow) if nrow else None)
        preds = [{"samples": Path(p).relative_to(out_dir).as_posix()} for p in paths]
        for i, record in enumerate(preds if labels is not None else []):
            record["label"] = int(labels[i])
        result = {
            "task": self.name,
            "data": self.facts.to_dict(),
            "predictions": preds,
            "grid": Path(grid).relative_to(out_dir).as_posix(),
            "options": {**sampling, "seed": seed},
        }
        (out_dir / "predictions.json").write_text(json.dumps(result, indent=2) + "\n")  # the same file as predict
        return {**result, "json": str(out_dir / "predictions.json")}

    def preprocess(self, image: np.ndarray, options: dict[str, Any]) -> Any:
        """Image inputs are for inpainting, which only a diffusion model does: this task refuses them."""
        raise ConfigError(
            f"Inpainting input images needs a diffusion model; this checkpoint holds a {self.family or 'generation'} "
            "model, which only samples: run predict without input paths."
        )

    def postprocess(self, output: Any, image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """Never reached for families that refuse inputs (see `preprocess`)."""
        return {}


def family_task(cfg: dict[str, Any]) -> type[GenerationTask]:
    """The task class for the family of `cfg.model` (from its MODELS registration metadata)."""
    spec = cfg["model"]
    name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
    if not name:
        raise ConfigError(f"'model' must be a mapping with a 'name' key (e.g. model.name=ddpm), got {spec!r}.")
    family = MODELS.metadata(name, [GenerationTask.name]).get("family")
    if family not in FAMILIES:
        raise ConfigError(
            f"Generation model '{name}' has no known family (metadata family={family!r}); register it with "
            f"metadata={{'family': ...}}, one of: {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[family]
