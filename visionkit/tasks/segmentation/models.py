"""Segmentation models: a U-Net on any timm `features_only` encoder and torchvision's FCN/DeepLabV3/LR-ASPP.

Contract for every segmentation model (plugins included): `forward(images)` returns logits of shape
BxCxhxw (the task resizes them to the mask size when h, w differ), or in training mode a dict with
`"out"` and optionally `"aux"` logits for an auxiliary loss.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.engine.hubs import load_timm, load_torchvision
from visionkit.engine.weights import LoadReport, announce, check_choice, load_matching, loading_enabled, read_state_file
from visionkit.errors import ConfigError, did_you_mean
from visionkit.registry import MODELS


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net decoder over the feature pyramid of a timm encoder created with `features_only=True`."""

    def __init__(self, encoder: nn.Module, num_classes: int, decoder_channels: list[int], in_chans: int = 3) -> None:
        super().__init__()
        self.encoder = encoder
        channels = list(encoder.feature_info.channels())
        if len(decoder_channels) != len(channels):
            raise ConfigError(
                f"model.decoder_channels has {len(decoder_channels)} entries but the encoder gives "
                f"{len(channels)} feature levels (channels {channels}); give one decoder width per level."
            )
        self.blocks = nn.ModuleList()
        in_channels = channels[-1]
        # deepest-but-one .. shallowest feature, then the input image itself at full resolution: it gives the
        # last block sharp colour edges that the encoder's strided stem has already blurred
        skips = [*channels[-2::-1], in_chans]
        for width, skip in zip(decoder_channels, skips, strict=True):
            self.blocks.append(_conv_block(in_channels + skip, width))
            in_channels = width
        self.head = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the input resolution."""
        features = self.encoder(images)
        x = features[-1]
        skips = features[-2::-1]
        for index, block in enumerate(self.blocks):
            skip = skips[index] if index < len(skips) else images
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def load_weights(model: nn.Module, path: str, what: str) -> LoadReport | None:
    """Load a local state-dict file; head layers whose shape differs (other class count) are left initialised."""
    if not loading_enabled():
        return None  # a checkpoint's state dict follows
    state = read_state_file(path, f"{what}: weights")
    state = {k.removeprefix("net."): v for k, v in state.items()}  # saved from the wrapper below
    report = load_matching(model, state, what, str(Path(path).expanduser()), heads=_heads(model))
    if report.unexpected or len(report.missing) > len(model.state_dict()) // 4:
        raise ConfigError(
            f"{what}: weights file '{path}' does not match the model: {len(report.unexpected)} unexpected keys "
            f"(e.g. {report.unexpected[:3]}), {len(report.missing)} missing or differently shaped "
            f"(e.g. {report.missing[:3]})."
        )
    return announce(model, report)


def _heads(net: nn.Module) -> tuple[str, ...]:
    """The class-scoring layers of a torchvision segmentation model (re-initialised for another class count)."""
    names = ("classifier.4", "aux_classifier.4", "classifier.low_classifier", "classifier.high_classifier")
    present = {name for name, _ in net.named_modules()}
    return tuple(n for n in names if n in present)


@MODELS.register("unet", task="segmentation")
def build_unet(
    num_classes: int,
    encoder: str = "resnet18",
    decoder_channels: list[int] | None = None,
    in_chans: int = 3,
    encoder_weights: str | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> UNet:
    """U-Net; `encoder` is any timm model name; `pretrained` loads timm's weights for it through the Hugging
    Face hub cache, `encoder_weights` from a local timm checkpoint file."""
    import timm

    if not timm.is_model(encoder):
        raise ConfigError(
            f"model.encoder '{encoder}' is not a timm model.{did_you_mean(encoder, timm.list_models())} "
            "See timm.list_models() for names (e.g. resnet18, resnet10t, mobilenetv3_small_100)."
        )
    kwargs: dict[str, Any] = {"features_only": True, "in_chans": in_chans, **(encoder_kwargs or {})}
    try:
        body = timm.create_model(encoder, pretrained=False, **kwargs)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(f"model.encoder '{encoder}' could not be built with features_only=True: {exc}") from exc
    load_timm(body, encoder, pretrained, encoder_weights, in_chans, f"unet encoder {encoder}", "model.encoder_weights")
    levels = len(body.feature_info.channels())
    widths = list(decoder_channels) if decoder_channels else [256, 128, 64, 32, 16][-levels:]
    return UNet(body, num_classes, widths, in_chans)


class TorchvisionSegmenter(nn.Module):
    """Wraps a torchvision segmentation model: logits in eval mode, `{"out", "aux"}` in training mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits at the input resolution (plus the auxiliary head's logits while training)."""
        aux = getattr(self.net, "aux_classifier", None)
        if aux is None:
            return self.net(images)["out"]
        features = self.net.backbone(images)
        size = images.shape[-2:]
        out = F.interpolate(self.net.classifier(features["out"]), size=size, mode="bilinear", align_corners=False)
        if not self.training:
            return out  # skip the auxiliary head at inference
        aux_out = F.interpolate(aux(features["aux"]), size=size, mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux_out}


def _torchvision(
    kind: str,
    backbones: dict[str, Any],
    backbone: str,
    num_classes: int,
    weights: str | None,
    pretrained: bool | str,
    **kwargs: Any,
) -> TorchvisionSegmenter:
    if backbone not in backbones:
        raise ConfigError(
            f"model.backbone '{backbone}' is not available for {kind}.{did_you_mean(backbone, backbones)} "
            f"Accepted: {', '.join(backbones)}."
        )
    if pretrained not in (True, False, None, "backbone"):
        raise ConfigError(
            f"model.pretrained is {pretrained!r} for {kind}; accepted: true (the whole model's torchvision "
            "weights), backbone (ImageNet weights for the backbone only) or false."
        )
    check_choice(bool(pretrained), weights)
    builder = backbones[backbone]
    net = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if weights:
        load_weights(net, weights, f"model '{kind}'")
    elif pretrained == "backbone":
        # the ImageNet weights torchvision itself would give this backbone (its `weights_backbone` default)
        enum = inspect.signature(builder).parameters["weights_backbone"].default
        prefix = "features." if backbone.startswith("mobilenet") else ""  # torchvision keeps mobilenet's .features
        load_torchvision(
            net, enum, f"{kind} backbone {backbone}", rename=lambda k: "backbone." + k.removeprefix(prefix)
        )
    elif pretrained:
        from torchvision.models import get_model_weights

        enum = get_model_weights(builder).DEFAULT
        load_torchvision(net, enum, f"{kind} {backbone}", heads=_heads(net))
    return TorchvisionSegmenter(net)


@MODELS.register("fcn", task="segmentation")
def build_fcn(
    num_classes: int,
    backbone: str = "resnet50",
    aux_loss: bool = True,
    weights: str | None = None,
    pretrained: bool | str = False,
) -> TorchvisionSegmenter:
    """torchvision FCN; `pretrained` (true or backbone) via torch.hub's cache, or `weights` a local file."""
    from torchvision.models import segmentation as tvs

    backbones = {"resnet50": tvs.fcn_resnet50, "resnet101": tvs.fcn_resnet101}
    return _torchvision("fcn", backbones, backbone, num_classes, weights, pretrained, aux_loss=aux_loss)


@MODELS.register("deeplabv3", task="segmentation")
def build_deeplabv3(
    num_classes: int,
    backbone: str = "resnet50",
    aux_loss: bool = True,
    weights: str | None = None,
    pretrained: bool | str = False,
) -> TorchvisionSegmenter:
    """torchvision DeepLabV3 (resnet50, resnet101, mobilenet_v3_large); `pretrained` or `weights` a local file."""
    from torchvision.models import segmentation as tvs

    backbones = {
        "resnet50": tvs.deeplabv3_resnet50,
        "resnet101": tvs.deeplabv3_resnet101,
        "mobilenet_v3_large": tvs.deeplabv3_mobilenet_v3_large,
    }
    return _torchvision("deeplabv3", backbones, backbone, num_classes, weights, pretrained, aux_loss=aux_loss)


@MODELS.register("lraspp", task="segmentation")
def build_lraspp(
    num_classes: int, backbone: str = "mobilenet_v3_large", weights: str | None = None, pretrained: bool | str = False
) -> TorchvisionSegmenter:
    """torchvision LR-ASPP (no auxiliary head); `pretrained` (true or backbone) or `weights` a local file."""
    from torchvision.models import segmentation as tvs

    return _torchvision(
        "lraspp", {"mobilenet_v3_large": tvs.lraspp_mobilenet_v3_large}, backbone, num_classes, weights, pretrained
    )
