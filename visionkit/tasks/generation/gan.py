"""DCGAN-style generator and discriminator (optionally class-conditional) and the GAN losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.errors import ConfigError
from visionkit.registry import LOSSES, MODELS

MODES = ("discriminator", "generator", "sample")


class DCGANGenerator(nn.Module):
    """Noise (and label embedding) -> 4x4 features -> transposed-conv upsampling -> tanh image."""

    def __init__(self, z_dim: int, channels: int, image_size: int, width: int, num_classes: int = 0) -> None:
        super().__init__()
        ups = int(math.log2(image_size)) - 2
        self.start = width * 2 ** (ups - 1) if ups > 0 else width
        self.label_emb = nn.Embedding(num_classes, z_dim) if num_classes else None
        in_dim = z_dim * (2 if num_classes else 1)
        self.project = nn.Sequential(
            nn.Linear(in_dim, self.start * 16, bias=False), nn.BatchNorm1d(self.start * 16), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        ch = self.start
        for _ in range(ups):
            out = max(width, ch // 2)
            layers += [nn.ConvTranspose2d(ch, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        layers += [nn.Conv2d(ch, channels, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] from noise `z` (N, z_dim) and, if conditional, `labels` (N,)."""
        if self.label_emb is not None:
            z = torch.cat([z, self.label_emb(labels)], dim=1)
        h = self.project(z).view(z.shape[0], self.start, 4, 4)
        return self.body(h)


class DCGANDiscriminator(nn.Module):
    """Strided convs with LeakyReLU down to 4x4, a linear logit, and a projection term when conditional."""

    def __init__(self, channels: int, image_size: int, width: int, num_classes: int = 0) -> None:
        super().__init__()
        downs = int(math.log2(image_size)) - 2
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for _ in range(downs):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.logit = nn.Linear(ch * 16, 1)
        # projection discriminator (Miyato & Koyama): logit += <embed(y), features>
        self.label_emb = nn.Embedding(num_classes, ch * 16) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Realness logits (N,)."""
        h = self.body(images)
        out = self.logit(h).squeeze(1)
        if self.label_emb is not None:
            out = out + (self.label_emb(labels) * h).sum(1)
        return out


class GAN(nn.Module):
    """Generator + discriminator behind one `forward(mode, ...)`, so DDP syncs whichever part a step trains."""

    def __init__(
        self,
        generator: DCGANGenerator,
        discriminator: DCGANDiscriminator,
        z_dim: int,
        image_size: int,
        channels: int,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.z_dim = z_dim
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes

    @property
    def conditional(self) -> bool:
        """True when both networks take class labels."""
        return self.num_classes > 0

    def forward(
        self,
        mode: str,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        n: int | None = None,
        r1: bool = False,
    ) -> dict[str, torch.Tensor]:
        """'discriminator': logits for real `images` and fresh fakes (+ 'r1' penalty when asked);
        'generator': logits for fresh fakes; 'sample': {'images': fakes}. Noise comes from torch's RNG."""
        if mode not in MODES:
            raise ValueError(f"GAN mode must be one of {MODES}, got {mode!r}")
        device = self.discriminator.logit.weight.device
        n = images.shape[0] if images is not None else int(n or 1)
        labels = self._labels(labels, n, device)
        z = torch.randn(n, self.z_dim, device=device)
        if mode == "sample":
            return {"images": self.generator(z, labels)}
        if mode == "generator":
            return {"fake": self.discriminator(self.generator(z, labels), labels)}
        with torch.no_grad():
            fake = self.generator(z, labels)
        real = images.detach().requires_grad_(r1)
        both = None if labels is None else labels.repeat(2)
        logits = self.discriminator(torch.cat([real, fake.to(real.dtype)]), both)
        out = {"real": logits[:n], "fake": logits[n:]}
        if r1:
            (grad,) = torch.autograd.grad(logits[:n].float().sum(), real, create_graph=True)
            out["r1"] = grad.float().pow(2).flatten(1).sum(1).mean()
        return out

    def _labels(self, labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if labels is None:
            return torch.randint(0, self.num_classes, (n,), device=device)
        labels = labels.to(device=device, dtype=torch.long)
        if bool((labels < 0).any()):
            raise ConfigError("A class-conditional GAN needs labelled images; the batch has unlabelled ones (-1).")
        return labels

    @torch.no_grad()
    def generate(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample `n` images in [-1, 1]; the same `generator` seed gives the same images."""
        device = self.discriminator.logit.weight.device
        gen_device = generator.device if generator is not None else device
        z = torch.randn(n, self.z_dim, generator=generator, device=gen_device).to(device)
        if self.conditional:
            if labels is None:
                labels = torch.randint(0, self.num_classes, (n,), generator=generator, device=gen_device)
            labels = labels.to(device=device, dtype=torch.long)
        else:
            labels = None
        return self.generator(z, labels).float().clamp(-1, 1)


@MODELS.register("dcgan", task="generation", metadata={"family": "gan"})
def build_dcgan(
    image_size: int = 32,
    channels: int = 1,
    num_classes: int = 0,
    conditional: bool = False,
    z_dim: int = 64,
    width: int = 64,
    d_width: int | None = None,
) -> GAN:
    """DCGAN generator/discriminator pair; `conditional: true` uses labels (embedding + projection D)."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ConfigError(f"dcgan needs data.image_size to be a power of two >= 8, got {image_size}.")
    if conditional and num_classes < 1:
        raise ConfigError("model.conditional is true but data.num_classes is 0; use a labelled dataset.")
    classes = num_classes if conditional else 0
    gen = DCGANGenerator(z_dim, channels, image_size, width, classes)
    disc = DCGANDiscriminator(channels, image_size, d_width or width // 2, classes)
    return GAN(gen, disc, z_dim, image_size, channels, classes)


class GANLoss(nn.Module):
    """Base of the GAN objectives: discriminator and generator losses from logits, plus an R1 weight."""

    def __init__(self, r1_gamma: float = 0.0) -> None:
        super().__init__()
        if r1_gamma < 0:
            raise ConfigError(f"loss.r1_gamma must be >= 0, got {r1_gamma}.")
        self.r1_gamma = float(r1_gamma)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Loss of the discriminator given logits on real and fake images."""
        raise NotImplementedError

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Loss of the generator given discriminator logits on its images."""
        raise NotImplementedError


@LOSSES.register("gan_nonsaturating", task="generation")
class NonSaturatingLoss(GANLoss):
    """Goodfellow et al.'s non-saturating logistic loss: D: softplus(-real) + softplus(fake); G: softplus(-fake)."""

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Mean logistic loss of the discriminator."""
        return F.softplus(-real.float()).mean() + F.softplus(fake.float()).mean()

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Mean -log D(G(z))."""
        return F.softplus(-fake.float()).mean()


@LOSSES.register("gan_hinge", task="generation")
class HingeLoss(GANLoss):
    """Hinge loss (Lim & Ye; SAGAN): D: relu(1 - real) + relu(1 + fake); G: -fake."""

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Mean hinge loss of the discriminator."""
        return F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Mean negative critic score of the fakes."""
        return -fake.float().mean()
