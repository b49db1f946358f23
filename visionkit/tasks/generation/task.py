"""The generation task: GAN and diffusion training on the shared trainer, Fréchet distance, sample grids."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from visionkit.engine import distributed as dist
from visionkit.errors import ConfigError, DataError
from visionkit.registry import LOSSES, MODELS, TASKS
from visionkit.tasks.base import OptimizerGroup, StepContext, Task
from visionkit.tasks.generation.datasets import RepeatedDataset
from visionkit.tasks.generation.diffusion import SAMPLERS
from visionkit.tasks.generation.features import CheckpointClassifier, build_feature_net
from visionkit.tasks.generation.gan import GANLoss
from visionkit.tasks.generation.metrics import ClassifierScores, FeatureStats, frechet_distance
from visionkit.tasks.generation.visualize import save_grid


@TASKS.register("generation", aliases=["gen"])
class GenerationTask(Task):
    """Unconditional or class-conditional image generation with a GAN (two optimizers) or a diffusion model."""

    name = "generation"
    monitor = "val/fd"
    monitor_mode = "min"
    find_unused_parameters = True  # a GAN step trains one network; the other gets no gradient
    defaults = {
        "model": {"name": "ddpm"},
        "data": {
            "train": {"name": "digits"},
            "val": {"name": "digits"},
            "image_size": 32,
            "channels": None,  # filled in from the training set
            "num_classes": None,  # filled in from the training set (0 for unlabelled data)
            "class_names": None,
            "repeat": 1,  # passes over the training set per epoch
        },
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

    # -- config ---------------------------------------------------------------------------------
    def dataset_scopes(self) -> list[str]:
        """Dataset lookups also see classification datasets (digits, image_folder, cifar10, mnist, csv)."""
        return [*self.scopes(), "classification"]

    def validate(self) -> None:
        """Check component specs, the generation section, the data range and the model/loss pairing."""
        super().validate()
        g, d = self.cfg["generation"], self.cfg["data"]
        if g["sampler"] not in SAMPLERS:
            raise ConfigError(f"generation.sampler is {g['sampler']!r}; accepted: {', '.join(SAMPLERS)}.")
        for key in ("steps", "eval_steps", "grid_samples", "eval_samples"):
            value = g[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                extra = " or null" if key == "eval_samples" else ""
                raise ConfigError(f"generation.{key} must be a positive integer{extra}, got {value!r}.")
        if isinstance(g["guidance"], bool) or not isinstance(g["guidance"], (int, float)) or g["guidance"] < 0:
            raise ConfigError(f"generation.guidance must be a number >= 0 (1 = no guidance), got {g['guidance']!r}.")
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
        kind = self.model_kind()
        if kind == "diffusion" and self.cfg.get("loss") is not None:
            raise ConfigError("The diffusion model computes its own loss; remove 'loss' from the config (loss=null).")
        if kind == "gan" and self.cfg.get("loss") is not None:
            spec = self.cfg["loss"]
            builder = LOSSES.get(spec if isinstance(spec, str) else spec["name"], self.scopes())
            if not (isinstance(builder, type) and issubclass(builder, GANLoss)):
                raise ConfigError(f"loss {spec!r} is not a GAN loss; use gan_nonsaturating or gan_hinge.")

    def model_kind(self) -> str | None:
        """'gan', 'diffusion', or None for a model builder that does not say."""
        spec = self.cfg["model"]
        return getattr(MODELS.get(spec if isinstance(spec, str) else spec["name"], self.scopes()), "kind", None)

    def model_defaults(self) -> dict[str, Any]:
        """Offer image_size, channels and num_classes to every model builder."""
        d = self.cfg["data"]
        return {"image_size": d["image_size"], "channels": d["channels"] or 3, "num_classes": d["num_classes"] or 0}

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Offer split, transforms, image size, channels and [-1, 1] scaling to every dataset builder."""
        d = self.cfg["data"]
        return {
            "split": split,
            "transforms": d[f"{split}_transforms"],
            "image_size": d["image_size"],
            "channels": d["channels"],
            "mean": [0.5],
            "std": [0.5],
        }

    # -- builders -------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        """Build a dataset, record its classes and channels in the config, repeat the train split."""
        dataset = super().build_dataset(split)
        d = self.cfg["data"]
        classes = list(getattr(dataset, "classes", None) or [])
        if split == "train":
            self.check_metric_files()
            if d["num_classes"] not in (None, 0, len(classes)) and classes:
                raise DataError(f"data.num_classes is {d['num_classes']} but data.train has {len(classes)} classes.")
            d["num_classes"] = d["num_classes"] or len(classes)
            d["class_names"] = d["class_names"] or (classes or None)
            d["channels"] = d["channels"] or getattr(dataset, "channels", None)
            if d["repeat"] > 1:
                dataset = RepeatedDataset(dataset, d["repeat"])
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

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Build the GAN loss (non-saturating unless configured); metric networks are built lazily."""
        super().setup(model, device)
        if getattr(model, "kind", None) == "gan" and self.loss_fn is None:
            self.loss_fn = LOSSES.build("gan_nonsaturating", task=self.scopes())
        self._metric_nets: dict[str, Any] | None = None

    def optimizer_groups(self, model: nn.Module) -> dict[str, OptimizerGroup]:
        """A GAN gets two optimizers, discriminator first; anything else one optimizer."""
        if getattr(model, "kind", None) != "gan":
            return super().optimizer_groups(model)
        g = self.cfg["generation"]

        def lr(value: Any) -> dict[str, Any]:
            return {} if value is None else {"lr": value}

        return {
            "discriminator": OptimizerGroup(list(model.discriminator.parameters()), lr(g["lr_discriminator"])),
            "generator": OptimizerGroup(list(model.generator.parameters()), lr(g["lr_generator"])),
        }

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Diffusion: the denoising loss. GAN: the loss of the network `ctx.optimizer` names."""
        images, labels = batch
        if getattr(ctx.module, "kind", None) != "gan":
            return {"loss": ctx.model(images, labels)}
        if ctx.optimizer == "generator":
            out = ctx.model("generator", images, labels)
            return {"loss": self.loss_fn.generator_loss(out["fake"])}
        gamma = self.loss_fn.r1_gamma
        out = ctx.model("discriminator", images, labels, r1=gamma > 0)
        loss = self.loss_fn.discriminator_loss(out["real"], out["fake"])
        logs = {"d_real": out["real"].detach().float().mean(), "d_fake": out["fake"].detach().float().mean()}
        if gamma > 0:
            logs["r1"] = out["r1"].detach()
            loss = loss + 0.5 * gamma * out["r1"]
        return {"loss": loss, **logs}

    # -- sampling -------------------------------------------------------------------------------
    def sampling_options(
        self, model: nn.Module, overrides: dict[str, Any] | None = None, evaluation: bool = False
    ) -> dict[str, Any]:
        """Keyword arguments for `model.generate` / `model.inpaint` from the config and `overrides`."""
        if getattr(model, "kind", None) != "diffusion":
            return {}
        g, o = self.cfg["generation"], dict(overrides or {})
        steps = g["eval_steps"] if evaluation else g["steps"]
        opts = {
            "sampler": o.get("sampler", g["sampler"]),
            "steps": int(o.get("steps", steps)),
            "eta": float(o.get("eta", g["eta"])),
            "guidance": float(o.get("guidance", g["guidance"])),
        }
        if opts["sampler"] not in SAMPLERS:
            raise ConfigError(f"sampler is {opts['sampler']!r}; accepted: {', '.join(SAMPLERS)}.")
        if opts["sampler"] == "ddpm":
            opts["eta"] = 1.0  # ancestral sampling: the posterior variance, whatever generation.eta says
        return opts

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
            n, labels=labels, generator=generator, **self.sampling_options(model, overrides, evaluation)
        ).float()

    # -- validation -----------------------------------------------------------------------------
    def _nets(self, device: torch.device) -> dict[str, Any]:
        if self._metric_nets is None:
            g = self.cfg["generation"]
            nets: dict[str, Any] = {"classifier": None}
            if g["classifier"]:
                nets["classifier"] = CheckpointClassifier(g["classifier"], device).to(device)
            if g["feature_net"] == g["classifier"] and nets["classifier"] is not None:
                nets["features"] = lambda x: nets["classifier"](x)[1]
            else:
                nets["features"] = build_feature_net(g["feature_net"], g["feature_weights"], device, g["feature_size"])
            self._metric_nets = nets
        return self._metric_nets

    def reset_metrics(self) -> None:
        """Fresh feature statistics and the fixed validation noise."""
        g = self.cfg["generation"]
        self.real_stats, self.fake_stats = FeatureStats(), FeatureStats()
        self.scores: ClassifierScores | None = None
        self.generated = 0
        self.noise = torch.Generator().manual_seed(int(g["seed"]) + 1_000_003 * (dist.rank() + 1))

    def validation_step(self, batch: Any, ctx: StepContext) -> None:
        """Generate as many images as the batch holds (same labels) and add both to the statistics."""
        images, labels = batch
        cap = self.cfg["generation"]["eval_samples"]
        if cap is not None:
            room = -(-cap // dist.world_size()) - self.generated
            if room <= 0:
                return
            images, labels = images[:room], labels[:room]
        model = ctx.module
        conditional = getattr(model, "conditional", False)
        if conditional and bool((labels < 0).any()):
            labels = torch.randint(0, model.num_classes, labels.shape, generator=self.noise).to(labels.device)
        fakes = self.generate(model, images.shape[0], labels if conditional else None, self.noise, evaluation=True)
        self.generated += images.shape[0]
        nets = self._nets(images.device)
        with torch.autocast(images.device.type, enabled=False):
            self.real_stats.update(nets["features"](images.float()))
            self.fake_stats.update(nets["features"](fakes))
            if nets["classifier"] is not None:
                probs, _ = nets["classifier"](fakes)
                if self.scores is None:
                    self.scores = ClassifierScores(probs.shape[1])
                self.scores.update(probs, labels if conditional else None)

    def compute_metrics(self) -> dict[str, float]:
        """val/fd (Fréchet distance) and, with a classifier, confidence / classes covered / consistency."""
        if self.real_stats.total is None:
            return {}
        _, mu_r, cov_r = self.real_stats.reduce()
        n, mu_f, cov_f = self.fake_stats.reduce()
        out = {"val/fd": frechet_distance(mu_r, cov_r, mu_f, cov_f), "val/generated": float(n)}
        if self.scores is not None:
            out.update({f"val/{k}": v for k, v in self.scores.compute().items()})
        return out

    def sample_grid(self, model: nn.Module, autocast: Any = None) -> tuple[torch.Tensor, int]:
        """The fixed-noise grid: for conditional models one row per class; returns (images, per row)."""
        g = self.cfg["generation"]
        n, labels, nrow = g["grid_samples"], None, None
        if getattr(model, "conditional", False):
            per_class = max(1, n // model.num_classes)
            labels = torch.arange(model.num_classes).repeat_interleave(per_class)
            n, nrow = len(labels), per_class
        with autocast() if autocast is not None else contextlib.nullcontext():
            images = self.generate(model, n, labels, torch.Generator().manual_seed(int(g["seed"])), evaluation=True)
        return images, nrow or 0

    def on_validation_end(self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int) -> None:
        """Write the fixed-noise sample grid samples/epoch_XXX.png (EMA weights when kept)."""
        images, nrow = self.sample_grid(ctx.module, ctx.autocast)
        save_grid(images, Path(run_dir) / "samples" / f"epoch_{epoch:03d}.png", nrow or None)

    def summary_extras(self) -> dict[str, Any]:
        """How the metrics were measured."""
        g = self.cfg["generation"]
        return {
            "generation": {
                "feature_net": g["feature_net"],
                "classifier": g["classifier"],
                "eval_steps": g["eval_steps"],
                "sampler": g["sampler"],
                "guidance": g["guidance"],
            }
        }

    # -- inference ------------------------------------------------------------------------------
    def predict_files(
        self, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]
    ) -> dict[str, Any]:
        """No inputs: write N samples and a grid. Image inputs: inpaint them (diffusion) with a mask."""
        from visionkit.tasks.generation.inference import inpaint_files, sample_files

        if inputs:
            return inpaint_files(self, model, inputs, out_dir, options)
        return sample_files(self, model, out_dir, options)
