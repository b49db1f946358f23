"""Generation with a GAN: two optimizers (discriminator, then generator) on the shared trainer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionkit.engine.contracts import OptimizerGroup, StepContext
from visionkit.errors import ConfigError
from visionkit.registry import LOSSES
from visionkit.tasks.generation.export import gan_spec
from visionkit.tasks.generation.gan import GANLoss
from visionkit.tasks.generation.task import GenerationTask


class GANTask(GenerationTask):
    """Adversarial training: each step trains the network `ctx.optimizer` names with a GAN loss (+ R1)."""

    family = "gan"
    find_unused_parameters = True  # a GAN step trains one network; the other gets no gradient

    def validate(self) -> None:
        """Also check that a configured loss is a GAN loss."""
        super().validate()
        spec = self.cfg.get("loss")
        if spec is not None:
            builder = LOSSES.get(spec if isinstance(spec, str) else spec["name"], self.scopes())
            if not (isinstance(builder, type) and issubclass(builder, GANLoss)):
                raise ConfigError(f"loss {spec!r} is not a GAN loss; use gan_nonsaturating or gan_hinge.")

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Build the GAN loss (non-saturating unless configured)."""
        super().setup(model, device)
        if self.loss_fn is None:
            self.loss_fn = LOSSES.build("gan_nonsaturating", task=self.scopes())

    def optimizer_groups(self, model: nn.Module) -> dict[str, OptimizerGroup]:
        """Two optimizers, discriminator first, with `generation.lr_*` overriding `optimizer.lr`."""
        g = self.cfg["generation"]

        def lr(value: Any) -> dict[str, Any]:
            return {} if value is None else {"lr": value}

        return {
            "discriminator": OptimizerGroup(list(model.discriminator.parameters()), lr(g["lr_discriminator"])),
            "generator": OptimizerGroup(list(model.generator.parameters()), lr(g["lr_generator"])),
        }

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The loss of the network `ctx.optimizer` names; the discriminator's adds the R1 penalty."""
        images, labels = batch
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

    def export_spec(self, model: nn.Module, options: Any) -> Any:
        """The network to export (generator); sampling stays in Python."""
        return gan_spec(model, options)
