"""DDPM-style diffusion: noise schedules, the training loss, DDPM/DDIM samplers, guidance and inpainting."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.errors import ConfigError
from visionkit.registry import MODELS
from visionkit.tasks.generation.unet import UNet

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim")


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """Noise schedule betas (float64): 'linear' (Ho et al.) or 'cosine' (Nichol & Dhariwal)."""
    if schedule == "linear":
        scale = 1000.0 / timesteps  # keeps the end points meaningful for short schedules
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ConfigError(f"model.schedule is {schedule!r}; accepted: {', '.join(SCHEDULES)}.")


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """Evenly spaced timesteps from T-1 down to 0 (`steps` of them, at most T)."""
    steps = max(1, min(int(steps), timesteps))
    return sorted({round(x) for x in torch.linspace(0, timesteps - 1, steps).tolist()}, reverse=True)


class DiffusionModel(nn.Module):
    """A denoiser plus its noise schedule; `forward(images, labels)` returns the noise-prediction loss."""

    def __init__(
        self,
        denoiser: nn.Module,
        image_size: int,
        channels: int,
        timesteps: int = 1000,
        schedule: str = "linear",
        num_classes: int = 0,
        cond_drop_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.image_size = image_size
        self.channels = channels
        self.timesteps = timesteps
        self.num_classes = num_classes
        self.cond_drop_prob = cond_drop_prob
        alpha_bar = torch.cumprod(1 - make_betas(schedule, timesteps), dim=0)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    @property
    def conditional(self) -> bool:
        """True when the denoiser takes class labels."""
        return self.num_classes > 0

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss: MSE between true and predicted noise at uniformly drawn timesteps."""
        n = images.shape[0]
        t = torch.randint(0, self.timesteps, (n,), device=images.device)
        noise = torch.randn_like(images)
        ab = self.alpha_bar[t].view(n, 1, 1, 1)
        x_t = ab.sqrt() * images + (1 - ab).sqrt() * noise
        if self.conditional:
            labels = self._labels(labels, n, images.device)
            drop = torch.rand(n, device=images.device) < self.cond_drop_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        else:
            labels = None
        pred = self.denoiser(x_t, t, labels)
        return F.mse_loss(pred.float(), noise.float())

    def _labels(self, labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if labels is None:
            return torch.full((n,), self.num_classes, device=device, dtype=torch.long)
        labels = labels.to(device=device, dtype=torch.long)
        # negative labels (unlabelled images) train the unconditional branch
        return torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)

    def predict_noise(self, x: torch.Tensor, t: int, labels: torch.Tensor | None, guidance: float) -> torch.Tensor:
        """Predicted noise at integer timestep `t`, with classifier-free guidance when `guidance != 1`."""
        n = x.shape[0]
        tt = torch.full((n,), t, device=x.device, dtype=torch.long)
        if not self.conditional:
            return self.denoiser(x, tt, None).float()
        labels = self._labels(labels, n, x.device)
        if guidance == 1.0:
            return self.denoiser(x, tt, labels).float()
        null = torch.full_like(labels, self.num_classes)
        both = self.denoiser(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).float()
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def _step(
        self,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        labels: torch.Tensor | None,
        guidance: float,
        eta: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """One reverse step from `t` to `t_prev` (-1 = clean image); eta=1 is DDPM, eta=0 is DDIM."""
        eps = self.predict_noise(x, t, labels, guidance)
        ab = self.alpha_bar[t].double()
        ab_prev = self.alpha_bar[t_prev].double() if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        x = x.float()
        x0 = ((x - (1 - ab).sqrt().float() * eps) / ab.sqrt().float()).clamp(-1, 1)
        eps = (x - ab.sqrt().float() * x0) / (1 - ab).sqrt().float()
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
        direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt()
        out = ab_prev.sqrt().float() * x0 + direction.float() * eps
        if t_prev >= 0 and sigma > 0:
            out = out + sigma.float() * _randn(x.shape, generator, x.device)
        return out

    def _schedule(self, sampler: str, steps: int | None, eta: float) -> tuple[list[int], float]:
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler is {sampler!r}; accepted: {', '.join(SAMPLERS)}.")
        if sampler == "ddpm":
            return sampling_timesteps(self.timesteps, steps or self.timesteps), 1.0
        return sampling_timesteps(self.timesteps, steps or 50), float(eta)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """Sample `n` images in [-1, 1]; the same `generator` seed gives the same images."""
        device = self.alpha_bar.device
        ts, eta = self._schedule(sampler, steps, eta)
        x = _randn((n, self.channels, self.image_size, self.image_size), generator, device)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = self._step(x, t, t_prev, labels, guidance, eta, generator)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def inpaint(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        guidance: float = 1.0,
        resample: int = 1,
    ) -> torch.Tensor:
        """Fill the region where `masks` is 1 (N,1,H,W) in `images` (N,C,H,W, in [-1,1]); keep the rest.

        At every reverse step the known region is replaced by the real image noised to that step
        (RePaint); `resample` > 1 re-noises and repeats each step to harmonise the two regions.
        """
        device = self.alpha_bar.device
        images, masks = images.to(device).float(), masks.to(device).float()
        ts, eta = self._schedule(sampler, steps, eta)
        x = _randn(images.shape, generator, device)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            for r in range(max(1, resample)):
                x_prev = self._step(x, t, t_prev, labels, guidance, eta, generator)
                ab_prev = self.alpha_bar[t_prev] if t_prev >= 0 else torch.ones((), device=device)
                known = ab_prev.sqrt() * images + (1 - ab_prev).sqrt() * _randn(images.shape, generator, device)
                x_prev = masks * x_prev + (1 - masks) * known
                if r + 1 < resample and t_prev >= 0:
                    ratio = self.alpha_bar[t] / ab_prev
                    x = ratio.sqrt() * x_prev + (1 - ratio).sqrt() * _randn(images.shape, generator, device)
                else:
                    x = x_prev
        return (masks * x + (1 - masks) * images).clamp(-1, 1)


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device).to(device)


@MODELS.register("ddpm", task="generation", aliases=["diffusion"], metadata={"family": "diffusion"})
def build_ddpm(
    image_size: int = 16,
    channels: int = 1,
    num_classes: int = 0,
    conditional: bool = False,
    width: int = 32,
    mults: Sequence[int] = (1, 2, 2),
    blocks: int = 1,
    attention_levels: Sequence[int] = (),
    dropout: float = 0.0,
    timesteps: int = 1000,
    schedule: str = "linear",
    cond_drop_prob: float = 0.1,
) -> DiffusionModel:
    """DDPM with a small U-Net; `conditional: true` adds class labels and classifier-free guidance."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"model.schedule is {schedule!r}; accepted: {', '.join(SCHEDULES)}.")
    factor = 2 ** (len(mults) - 1)
    if image_size % factor:
        raise ConfigError(
            f"data.image_size {image_size} must be divisible by {factor} for model.mults {list(mults)} "
            "(each level after the first halves the resolution)."
        )
    if timesteps < 2:
        raise ConfigError(f"model.timesteps must be >= 2, got {timesteps}.")
    if conditional and num_classes < 1:
        raise ConfigError("model.conditional is true but data.num_classes is 0; set data.num_classes.")
    classes = num_classes if conditional else 0
    unet = UNet(channels, width, tuple(mults), blocks, tuple(attention_levels), classes, dropout)
    return DiffusionModel(unet, image_size, channels, timesteps, schedule, classes, cond_drop_prob)
