"""Export signatures of the generation networks: the DDPM denoiser and the DCGAN generator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from visionkit.engine.export_spec import ExportOptions, ExportSpec, TensorInfo
from visionkit.errors import ConfigError

NOT_PREDICTABLE = {"predict": False}  # tools/predict.py samples with the checkpoint, not with an exported network


class Denoiser(nn.Module):
    """The DDPM denoiser as an exported module: (noisy images, timesteps[, labels]) -> predicted noise."""

    def __init__(self, denoiser: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.denoiser, self.conditional = denoiser, conditional

    def forward(self, images: torch.Tensor, timesteps: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        """Noise predicted for `images` at integer `timesteps` (and class `labels`, num_classes = unconditional)."""
        return self.denoiser(images, timesteps, labels[0] if self.conditional else None)


class Generator(nn.Module):
    """The DCGAN generator as an exported module: (noise[, labels]) -> images in [-1, 1]."""

    def __init__(self, generator: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.generator, self.conditional = generator, conditional

    def forward(self, noise: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        """Images for `noise` (N, z_dim) (and class `labels`)."""
        return self.generator(noise, labels[0] if self.conditional else None)


def _check(options: ExportOptions) -> None:
    if options.softmax:
        raise ConfigError("--softmax applies to classification and segmentation exports, not to generation.")


def diffusion_spec(model: nn.Module, options: ExportOptions) -> ExportSpec:
    """The denoiser of a DiffusionModel: noisy images, timesteps and (conditional) labels in, noise out."""
    _check(options)
    size = int(options.image_size or model.image_size)
    batch: int | str = "batch" if options.dynamic_batch else 1
    n = 2 if options.dynamic_batch else 1
    conditional = bool(model.conditional)

    def random(g: torch.Generator, count: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(count, model.channels, size, size, generator=g)
        t = torch.randint(0, model.timesteps, (count,), generator=g)
        labels = torch.randint(0, model.num_classes + 1, (count,), generator=g)
        return (x, t, labels) if conditional else (x, t)

    def make_inputs(samples: Sequence[Any] | None, limit: int) -> list[tuple[torch.Tensor, ...]]:
        g = torch.Generator().manual_seed(1)
        count = 4 if options.dynamic_batch else 1
        return [random(g, count) for _ in range(max(1, min(limit, 16) // count))]

    inputs = [
        TensorInfo(
            "images", [batch, model.channels, size, size], "float32", "noisy images x_t (data scaled to [-1, 1])"
        ),
        TensorInfo("timesteps", [batch], "int64", f"diffusion step t in 0..{model.timesteps - 1}"),
    ]
    if conditional:
        inputs.append(TensorInfo("labels", [batch], "int64", f"class index; {model.num_classes} = unconditional"))
    output = TensorInfo("noise", [batch, model.channels, size, size], "float32", "predicted noise epsilon(x_t, t)")
    return ExportSpec(
        module=Denoiser(model.denoiser, conditional),
        inputs=inputs,
        outputs=[output],
        example=random(torch.Generator().manual_seed(0), n),
        make_inputs=make_inputs,
        reads_data=False,
        notes={**NOT_PREDICTABLE, "timesteps": model.timesteps, "sampling": "DDPM/DDIM loop in Python"},
    )


def gan_spec(model: nn.Module, options: ExportOptions) -> ExportSpec:
    """The generator of a GAN: noise and (conditional) labels in, images in [-1, 1] out."""
    _check(options)
    if options.image_size and options.image_size != model.image_size:
        raise ConfigError(
            f"--image-size {options.image_size}: a DCGAN generator makes {model.image_size}px images only; drop it."
        )
    batch: int | str = "batch" if options.dynamic_batch else 1
    conditional = bool(model.conditional)

    def random(g: torch.Generator, count: int) -> tuple[torch.Tensor, ...]:
        z = torch.randn(count, model.z_dim, generator=g)
        return (z, torch.randint(0, model.num_classes, (count,), generator=g)) if conditional else (z,)

    def make_inputs(samples: Sequence[Any] | None, limit: int) -> list[tuple[torch.Tensor, ...]]:
        g = torch.Generator().manual_seed(1)
        count = 4 if options.dynamic_batch else 1
        return [random(g, count) for _ in range(max(1, min(limit, 16) // count))]

    inputs = [TensorInfo("noise", [batch, model.z_dim], "float32", "standard normal noise z")]
    if conditional:
        inputs.append(TensorInfo("labels", [batch], "int64", f"class index 0..{model.num_classes - 1}"))
    size = model.image_size
    output = TensorInfo("images", [batch, model.channels, size, size], "float32", "generated images in [-1, 1]")
    return ExportSpec(
        module=Generator(model.generator, conditional),
        inputs=inputs,
        outputs=[output],
        example=random(torch.Generator().manual_seed(0), 2 if options.dynamic_batch else 1),
        make_inputs=make_inputs,
        reads_data=False,
        notes={**NOT_PREDICTABLE, "z_dim": model.z_dim, "to_pixels": "(images + 1) * 127.5"},
    )
