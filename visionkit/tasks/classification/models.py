"""Classification models: a small built-in CNN and any timm model by name (`timm/<arch>`)."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from visionkit.engine.hubs import load_timm
from visionkit.errors import ConfigError, did_you_mean
from visionkit.registry import MODELS

TASK = "classification"


@MODELS.register("small_cnn", task=TASK)
class SmallCNN(nn.Module):
    """A compact CNN for tiny inputs (8–64 px): conv blocks, global average pooling, linear head."""

    def __init__(
        self, num_classes: int, in_chans: int = 3, width: int = 32, depth: int = 3, dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for i in range(depth):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < depth - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True) if i > 0 else nn.Identity())
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x):  # noqa: ANN001, ANN201 - standard nn.Module signature
        """Return class logits for a batch of images."""
        return self.head(self.pool(self.features(x)))


@MODELS.register("mlp", task=TASK)
class MLP(nn.Module):
    """A plain multilayer perceptron over flattened pixels (a baseline and a benchmark model)."""

    def __init__(self, num_classes: int, in_chans: int = 3, image_size: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_chans * image_size * image_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):  # noqa: ANN001, ANN201
        """Return class logits for a batch of images."""
        return self.net(x)


def timm_model(
    arch: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
) -> nn.Module:
    """Any timm model: `model.name: timm/resnet18` (or a tagged `timm/resnet18.a1_in1k`).

    `pretrained: true` loads timm's weights through the Hugging Face hub cache; `weights: FILE` a local
    .pth/.safetensors file. A classifier of another class count is left freshly initialised.
    """
    if not timm.is_model(arch):
        raise ConfigError(
            f"timm has no model '{arch}' (model.name=timm/{arch}).{did_you_mean(arch, timm.list_models())} "
            "See timm.list_models('pattern*')."
        )
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except RuntimeError as exc:  # e.g. an unknown pretrained tag in `timm/<arch>.<tag>`
        tags = timm.list_pretrained(arch.split(".")[0] + ".*")[:8]
        raise ConfigError(f"model.name=timm/{arch}: {exc}. Tags timm knows: {', '.join(tags) or 'none'}.") from None
    load_timm(model, arch, pretrained, weights, in_chans, f"timm/{arch}", "model.weights")
    return model


MODELS.register_namespace("timm", timm_model, task=TASK, names=timm.list_models)


def timm_catalog(pattern: str, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """timm architectures matching `pattern` (fnmatch, e.g. '*resnet*'): name, parameter count (built on the meta
    device, so nothing is allocated or downloaded), input size and pretrained tags from timm's own tables; the
    first `limit` rows and the number that matched."""
    names = timm.list_models(pattern)
    tags: dict[str, list[str]] = {}
    for tagged in timm.list_pretrained(pattern + "*" if not pattern.endswith("*") else pattern):
        arch, _, tag = tagged.partition(".")
        tags.setdefault(arch, []).append(tag)
    rows = []
    for name in names[: limit or None]:
        try:
            with torch.device("meta"):
                params: int | None = sum(p.numel() for p in timm.create_model(name).parameters())
        except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta: count unknown
            params = None
        cfg = timm.get_pretrained_cfg(name)
        size = list(getattr(cfg, "input_size", []) or [])[-1:] if cfg is not None else []
        rows.append({"name": f"timm/{name}", "params": params, "input_size": size[0] if size else None,
                     "pretrained": tags.get(name, [])})  # fmt: skip
    return rows, len(names)
