"""Data for the restoration task: procedurally drawn clean images and the degradations applied to them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from visionkit import DATASETS, DataFacts
from visionkit.data.images import to_tensor, to_uint8_image
from visionkit.errors import ConfigError

# Degradation modes and the factor by which each one shrinks the image (the model's upscale factor).
MODES = {"denoise": 1, "sr2x": 2}


def check_mode(mode: str) -> int:
    """The scale factor of a degradation mode; a ConfigError naming the accepted modes otherwise."""
    if mode not in MODES:
        raise ConfigError(f"restoration.mode is {mode!r}; accepted: {', '.join(MODES)}.")
    return MODES[mode]


def degrade(clean: torch.Tensor, mode: str, noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A CHW image in [0, 1] -> its degraded version: 2x2 average downscale (sr2x), Gaussian noise, 8-bit.

    Rounding to 8 bits makes training inputs look like the image files the model gets at predict time.
    """
    x = clean
    if check_mode(mode) > 1:
        x = F.avg_pool2d(x[None], MODES[mode])[0]
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1).mul(255).round().div(255)


def render_shapes(count: int, image_size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Images (N, H, W, C uint8) of gradients under ellipses, boxes, bars and striped discs, anti-aliased."""
    s = image_size * 2  # drawn at twice the size and averaged down: soft, natural edges
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    out = np.empty((count, s, s, channels), np.float32)
    for i in range(count):
        slope = rng.uniform(-0.6, 0.6, 2)
        ramp = (slope[0] * (xx - 0.5) + slope[1] * (yy - 0.5))[..., None]
        img = rng.uniform(0.2, 0.8, channels) + ramp * rng.uniform(0.5, 1.0, channels)
        for _ in range(rng.integers(3, 8)):
            colour = rng.uniform(0, 1, channels).astype(np.float32)
            cx, cy, rx, ry = *rng.uniform(0.1, 0.9, 2), *rng.uniform(0.05, 0.3, 2)
            angle = rng.uniform(0, np.pi)
            along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
            kind = rng.integers(4)
            if kind == 0:
                mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            elif kind == 1:
                mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
            elif kind == 2:
                mask = np.abs(along) <= rng.uniform(0.01, 0.04)
            else:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= rx**2
                colour = colour * (0.5 + 0.5 * np.sin(along * rng.uniform(20, 60)))[mask][:, None]
            img[mask] = colour
        out[i] = img
    out = out.reshape(count, image_size, 2, image_size, 2, channels).mean((2, 4))
    return np.round(out.clip(0, 1) * 255).astype(np.uint8)


@DATASETS.register("shapes", task="restoration")
class ShapesDataset(Dataset):
    """Generated clean images, each returned as (degraded, clean) CHW tensors in [0, 1].

    Training draws fresh noise from torch's RNG (seeded and checkpointed by the core); validation noise
    is seeded per image, so every validation pass sees the same degraded inputs.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 2000,
        image_size: int = 32,
        channels: int = 3,
        mode: str = "denoise",
        noise_std: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.scale = check_mode(mode)
        if image_size % self.scale:
            raise ConfigError(f"data.image_size must be a multiple of {self.scale} for restoration.mode {mode}.")
        self.split, self.mode, self.noise_std, self.seed = split, mode, float(noise_std), seed
        self.channels, self.image_size = channels, image_size
        self.images = render_shapes(size, image_size, channels, np.random.default_rng([seed, int(split != "train")]))

    def facts(self) -> DataFacts:
        """Channels, clean image size and the model's upscale factor (an extra fact offered to builders)."""
        return DataFacts(channels=self.channels, image_size=self.image_size, extra={"scale": self.scale})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean = to_tensor(self.images[index])
        generator = None if self.split == "train" else torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return degrade(clean, self.mode, self.noise_std, generator), clean


def comparison_grid(degraded: torch.Tensor, restored: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """One row per image: degraded input (upscaled), restored, clean target, as an HWC uint8 picture."""
    rows = [torch.cat([d, r, t], dim=2) for d, r, t in zip(degraded, restored, target)]
    return to_uint8_image(torch.cat(rows, dim=1))
