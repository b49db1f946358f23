"""A small U-Net denoiser with sinusoidal time embedding and optional class embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.errors import ConfigError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block whose features are shifted/scaled by the embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block conditioned on `emb` (N, emb_dim)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention used at the lowest resolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all positions and add the result to `x`."""
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(attn.transpose(1, 2).reshape(n, c, h, w))


class UNet(nn.Module):
    """Noise-prediction U-Net: `forward(x, t, labels)`; label `num_classes` means 'no label' (for guidance)."""

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        mults: Sequence[int] = (1, 2, 2),
        blocks: int = 1,
        attention_levels: Sequence[int] = (),
        num_classes: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width < 1 or not mults or blocks < 1:
            raise ConfigError(f"model: width ({width}), mults ({list(mults)}) and blocks ({blocks}) must be positive.")
        emb_dim = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes
        # one extra row: the "null" label used for classifier-free guidance
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [width]
        ch = width
        for level, mult in enumerate(mults):
            for _ in range(blocks):
                out = width * mult
                self.down.append(self._stage(ch, out, emb_dim, dropout, level in attention_levels))
                ch = out
                skips.append(ch)
            if level < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch), ResBlock(ch, ch, emb_dim)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(mults))):
            for _ in range(blocks + 1):
                out = width * mults[level]
                self.up.append(self._stage(ch + skips.pop(), out, emb_dim, dropout, level in attention_levels))
                ch = out
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.downsamples = len(mults) - 1

    @staticmethod
    def _stage(in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool) -> nn.ModuleList:
        layers: list[nn.Module] = [ResBlock(in_ch, out_ch, emb_dim, dropout)]
        if attention:
            layers.append(SelfAttention(out_ch))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise in `x` at timesteps `t` (N,), optionally for class `labels` (N,)."""
        emb = self.time_mlp(timestep_embedding(t, self.width))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_emb(labels)
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = self._run_stage(layer, h, emb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = self._run_stage(layer, torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.head(h)

    @staticmethod
    def _run_stage(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nn.ModuleList):
            for sub in layer:
                h = sub(h, emb) if isinstance(sub, ResBlock) else sub(h)
            return h
        return layer(h)
