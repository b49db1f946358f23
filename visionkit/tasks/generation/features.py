"""Feature networks for the Fréchet distance and classifiers for class-consistency, on [-1, 1] images."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.engine.inference import load_model
from visionkit.errors import ConfigError

PIXEL_FEATURES = 1024  # "pixels" features are area-downsampled to at most this many values


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert between grey and RGB: repeat a grey channel, or average RGB to grey."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise ConfigError(f"Cannot feed {c}-channel images to a network that takes {channels} channels.")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size (no-op when already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class PixelFeatures(nn.Module):
    """Raw pixels as features (area-downsampled to <= 1024 values): cheap, no weights, a sanity baseline."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, D) features."""
        c, h = images.shape[1], images.shape[-1]
        side = h
        while c * side * side > PIXEL_FEATURES and side > 1:
            side //= 2
        if side != h:
            images = F.adaptive_avg_pool2d(images, side)
        return images.float().flatten(1)


class TimmFeatures(nn.Module):
    """Pooled features of a timm model (`timm/<arch>`), with weights loaded from a local file if given."""

    def __init__(self, arch: str, weights: str | None = None, image_size: int | None = None) -> None:
        super().__init__()
        import timm

        if not timm.list_models(arch.split(".")[0]):  # a pretrained tag (arch.tag) may follow
            raise ConfigError(f"generation.feature_net: timm has no model '{arch}'. See timm.list_models('pattern*').")
        if weights:
            if not Path(weights).is_file():
                raise ConfigError(f"generation.feature_weights '{weights}' does not exist; give a local weights file.")
            self.net = timm.create_model(
                arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)}
            )
        else:
            self.net = timm.create_model(arch, pretrained=False, num_classes=0)
        cfg = self.net.pretrained_cfg
        self.size = int(image_size or cfg.get("input_size", (3, 224, 224))[-1])
        self.in_chans = int(cfg.get("input_size", (3,))[0])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, -1, 1, 1))
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, D) pooled features."""
        x = resize(match_channels(images.float(), self.in_chans), self.size)
        x = ((x + 1) / 2 - self.mean[:, : x.shape[1]]) / self.std[:, : x.shape[1]]
        return self.net(x).float()


class CheckpointClassifier(nn.Module):
    """A visionkit classification checkpoint: class probabilities and penultimate features (input of the
    last linear layer), with the checkpoint's own resize and mean/std normalisation."""

    def __init__(self, checkpoint: str | Path, device: torch.device | str = "cpu") -> None:
        super().__init__()
        path = Path(checkpoint)
        if not path.is_file():
            raise ConfigError(
                f"Classifier checkpoint '{checkpoint}' does not exist; train one with "
                "`python tools/train.py --task cls` and pass runs/.../checkpoints/best.pt."
            )
        task, model, cfg = load_model(path, device=str(device))
        if cfg["task"] != "classification":
            raise ConfigError(f"'{checkpoint}' is a {cfg['task']} checkpoint; a classification checkpoint is needed.")
        self.net = model.eval()
        # load_model reads the checkpoint's data facts (ckpt["facts"]; older checkpoints: their config's data
        # section); facts a checkpoint does not record fall back to its config.
        facts, d = task.facts, cfg["data"]
        self.num_classes = int(facts.num_classes or d.get("num_classes") or 0)
        self.class_names = list(facts.class_names or d.get("class_names") or range(self.num_classes))
        self.size = facts.image_size or d.get("image_size")
        self.in_chans = int(facts.channels or d.get("channels") or 3)
        mean, std = facts.mean or d.get("mean") or [0.5], facts.std or d.get("std") or [0.5]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        linears = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"The model in '{checkpoint}' has no linear layer to take features from.")
        self._features: torch.Tensor | None = None
        linears[-1].register_forward_hook(self._keep_input)

    def _keep_input(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._features = inputs[0]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) in [-1, 1] -> (class probabilities (N, K), features (N, D))."""
        x = match_channels(images.float(), self.in_chans)
        if self.size:
            x = resize(x, int(self.size))
        x = ((x + 1) / 2 - self.mean) / self.std
        probs = self.net(x).float().softmax(dim=1)
        return probs, self._features.float().flatten(1)


class ClassifierFeatures(nn.Module):
    """Penultimate features of a `CheckpointClassifier` (for the Fréchet distance)."""

    def __init__(self, classifier: CheckpointClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, D) features."""
        return self.classifier(images)[1]


def build_feature_net(
    spec: str | None, weights: str | None = None, device: torch.device | str = "cpu", image_size: int | None = None
) -> nn.Module:
    """`pixels`, `timm/<arch>` (optional local `weights`; `image_size` overrides the input size) or a path
    to a visionkit classification checkpoint (`.pt`)."""
    spec = spec or "pixels"
    if spec == "pixels":
        net: nn.Module = PixelFeatures()
    elif spec.startswith("timm/"):
        net = TimmFeatures(spec.split("/", 1)[1], weights, image_size)
    elif spec.endswith(".pt") or Path(spec).is_file():
        net = ClassifierFeatures(CheckpointClassifier(spec, device))
    else:
        raise ConfigError(
            f"generation.feature_net is {spec!r}; accepted: 'pixels', 'timm/<model name>' (with "
            "generation.feature_weights=<local file> for pretrained weights) or a classification checkpoint path."
        )
    return net.to(device).eval()
