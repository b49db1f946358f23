"""Models and losses of the restoration task: a small residual CNN that predicts a correction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.registry import LOSSES, MODELS


def upscale(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bicubic resize of an NCHW batch to `size` (a no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)


@MODELS.register("residual_cnn", task="restoration")
class ResidualCNN(nn.Module):
    """Upscale bicubically (when `scale` > 1), then add a correction predicted by a plain conv stack.

    The last layer starts at zero, so an untrained model returns its (upscaled) input unchanged.
    """

    def __init__(self, channels: int = 3, scale: int = 1, width: int = 32, depth: int = 5) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Degraded NCHW images in [0, 1] -> restored images, `scale` times larger."""
        x = upscale(x, (x.shape[-2] * self.scale, x.shape[-1] * self.scale))
        return x + self.body(x)


@LOSSES.register("l1", task="restoration")
class L1(nn.L1Loss):
    """Mean absolute error between restored and clean images."""

    def __init__(self) -> None:
        super().__init__()


@LOSSES.register("mse", task="restoration")
class MSE(nn.MSELoss):
    """Mean squared error between restored and clean images (what PSNR measures)."""

    def __init__(self) -> None:
        super().__init__()
