"""Multi-scale backbones chosen by name (torchvision, `timm/<name>`, built-in tiny CNNs) with an FPN on top."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from visionkit.engine.hubs import load_timm, load_torchvision
from visionkit.engine.weights import carry_reports, check_choice, loading_enabled, read_state_file
from visionkit.errors import ConfigError, DataError, did_you_mean

TINY_WIDTHS = {"tiny": (16, 32, 64, 96, 128), "small": (24, 48, 96, 160, 256)}
NORMS = ("bn", "frozen_bn", "gn")


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Sequential):
    """A plain CNN sized for CPU training from scratch: five stride-2 stages (strides 2..32)."""

    def __init__(self, widths: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        cin = 3
        for i, width in enumerate(widths):
            stage = [conv_bn_relu(cin, width, stride=2), conv_bn_relu(width, width)]
            if i >= 2:  # a second refinement conv on the deeper stages
                stage.append(conv_bn_relu(width, width))
            layers.append(nn.Sequential(*stage))
            cin = width
        super().__init__(*layers)


def backbone_names() -> list[str]:
    """Backbone names accepted without a prefix (torchvision classifiers with stages, tiny CNNs)."""
    tv = [n for n in tv_models.list_models(module=tv_models) if _torchvision_family(n)]
    return sorted(tv) + sorted(TINY_WIDTHS)


def _torchvision_family(name: str) -> str | None:
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return "resnet"
    if name.startswith(("mobilenet", "efficientnet", "convnext", "mnasnet")) or name.startswith("vgg"):
        return "features"
    return None


def _norm_layer(norm: str) -> Callable[..., nn.Module]:
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    return lambda channels: nn.GroupNorm(min(32, channels), channels)


def _probe(children: Sequence[tuple[str, nn.Module]], size: int = 256) -> list[tuple[str, int, int]]:
    """Run a dummy image through the children; return (name, stride, channels) after each."""
    out = []
    x = torch.zeros(1, 3, size, size)
    modes = [m.training for _, m in children]
    with torch.no_grad():
        for name, module in children:
            module.eval()  # keep batch-norm statistics untouched
            x = module(x)
            out.append((name, size // x.shape[-1], x.shape[1]))
    for (_, module), mode in zip(children, modes, strict=True):
        module.train(mode)
    return out


def _pick_levels(probe: list[tuple[str, int, int]], strides: Sequence[int], what: str) -> dict[int, tuple[str, int]]:
    """For each wanted stride, the last child with that stride and its channels."""
    last: dict[int, tuple[str, int]] = {}
    for name, stride, channels in probe:
        last[stride] = (name, channels)
    missing = [s for s in strides if s not in last]
    if missing:
        raise ConfigError(
            f"Backbone '{what}' has no feature map with stride {missing}; it offers strides "
            f"{sorted(last)}. Set model.strides to a subset of those."
        )
    return {s: last[s] for s in strides}


def _load_state(module: nn.Module, path: str | Path, what: str) -> None:
    """Load a local state dict into `module`, skipping classifier keys; every other key must match."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{what} file '{path}' does not exist. Give a local .pth state dict, or model.pretrained=true for the "
            "library's ImageNet weights (torchvision and timm backbones)."
        )

    state = read_state_file(path, what)
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if not usable or missing:
        raise DataError(
            f"{what} file '{path}' does not fit backbone weights: {len(missing)} of {len(own)} tensors "
            f"missing or of another shape (first: {missing[:3]}). Use a state dict saved from the same architecture."
        )
    module.load_state_dict(usable, strict=False)


class TimmFeatures(nn.Module):
    """A timm `features_only` model returning an ordered dict of the selected levels."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = list(indices)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Feature maps keyed '0', '1', ... from fine to coarse."""
        feats = self.model(x)
        return OrderedDict((str(i), feats[j]) for i, j in enumerate(self.indices))


class TimmWithFPN(nn.Module):
    """timm features followed by a torchvision FPN (same attribute names as BackboneWithFPN)."""

    def __init__(self, body: TimmFeatures, in_channels: list[int], out_channels: int, extra: ExtraFPNBlock | None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """FPN outputs keyed like torchvision's ('0', '1', ..., 'pool' or 'p6', 'p7')."""
        return self.fpn(self.body(x))


def _extra_block(extra: str, channels: int) -> ExtraFPNBlock | None:
    if extra == "pool":
        return LastLevelMaxPool()
    if extra == "p6p7":
        return LastLevelP6P7(channels, channels)
    return None


def multiscale_body(
    name: str,
    strides: Sequence[int],
    weights: str | None = None,
    norm: str | None = None,
    frozen_stages: int = 0,
    pretrained: bool = False,
) -> tuple[nn.Module, dict[str, int], list[int], str]:
    """Build a classifier trunk; return (module, return_layers, channels per stride, kind) for the strides asked.

    `pretrained` loads the library's ImageNet weights (torchvision: torch.hub cache; timm: Hugging Face hub
    cache); `weights` a local state dict. Either makes frozen batch norm the default.
    """
    check_choice(pretrained, weights, "model.backbone_weights")
    norm = norm or ("frozen_bn" if weights or pretrained else "bn")
    if norm not in NORMS:
        raise ConfigError(f"model.norm is '{norm}'; accepted: {', '.join(NORMS)}.{did_you_mean(norm, NORMS)}")
    if name.startswith("timm/"):
        return _timm_body(name[5:], strides, weights, norm, frozen_stages, bool(pretrained))
    if name in TINY_WIDTHS:
        if pretrained:
            raise ConfigError(
                f"Backbone '{name}' is visionkit's own small CNN and has no pretrained weights; drop "
                "model.pretrained, give model.backbone_weights=FILE, or pick a torchvision or timm backbone."
            )
        trunk: nn.Module = TinyBackbone(TINY_WIDTHS[name])
        if weights and loading_enabled():
            _load_state(trunk, weights, "model.backbone_weights")
        if norm != "bn":
            _swap_norm(trunk, norm)
    elif _torchvision_family(name) and name in tv_models.list_models(module=tv_models):
        kwargs: dict[str, Any] = {"weights": None}
        if not name.startswith(("convnext", "vgg", "mnasnet")):
            kwargs["norm_layer"] = _norm_layer(norm)
        model = tv_models.get_model(name, **kwargs)
        trunk = model if _torchvision_family(name) == "resnet" else model.features  # type: ignore[assignment]
        if weights and loading_enabled():
            _load_state(model, weights, "model.backbone_weights")
        elif pretrained:
            enum = tv_models.get_model_weights(name).DEFAULT
            load_torchvision(model, enum, f"backbone {name}", owner=trunk)
    else:
        raise ConfigError(
            f"Unknown backbone '{name}'.{did_you_mean(name, backbone_names())} Use a torchvision classifier "
            "(resnet18, resnet50, mobilenet_v3_large, efficientnet_b0, convnext_tiny, ...), tiny or small, "
            "or 'timm/<model name>' for any timm model that supports features_only."
        )
    children = [(n, m) for n, m in trunk.named_children() if n not in ("avgpool", "fc", "classifier")]
    levels = _pick_levels(_probe(children), strides, name)
    _freeze_until(children, [levels[s][0] for s in strides], frozen_stages)
    return_layers = {levels[s][0]: str(i) for i, s in enumerate(strides)}
    return trunk, return_layers, [levels[s][1] for s in strides], "torchvision"


def _timm_body(
    name: str, strides: Sequence[int], weights: str | None, norm: str, frozen_stages: int, pretrained: bool
) -> tuple[nn.Module, dict[str, int], list[int], str]:
    import timm
    from timm.layers import freeze_batch_norm_2d

    if not timm.is_model(name):
        raise ConfigError(f"Unknown timm model '{name}'.{did_you_mean(name, timm.list_models())}")
    model = timm.create_model(name, features_only=True, pretrained=False)
    load_timm(model, name, pretrained, weights, 3, f"backbone timm/{name}", "model.backbone_weights")
    reductions = list(model.feature_info.reduction())
    channels = list(model.feature_info.channels())
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ConfigError(f"timm model '{name}' has no feature map with stride {missing}; it offers {reductions}.")
    indices = [len(reductions) - 1 - reductions[::-1].index(s) for s in strides]
    if norm == "frozen_bn":
        model = freeze_batch_norm_2d(model)
    elif norm == "gn":
        raise ConfigError("model.norm 'gn' is not offered for timm backbones; use bn or frozen_bn.")
    if frozen_stages > len(strides):
        raise ConfigError(f"model.frozen_stages is {frozen_stages}; at most {len(strides)} (the number of strides).")
    if frozen_stages > 0:
        prefix = model.feature_info.info[indices[frozen_stages - 1]]["module"] + "."
        seen = False
        for pname, param in model.named_parameters():  # parameters come in forward order
            inside = pname.startswith(prefix)
            if seen and not inside:
                break
            seen = seen or inside
            param.requires_grad_(False)
    return TimmFeatures(model, indices), {}, [channels[i] for i in indices], "timm"


def _swap_norm(module: nn.Module, norm: str) -> None:
    """Replace BatchNorm2d layers in place (GroupNorm, or frozen BN keeping the statistics)."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new = _norm_layer(norm)(child.num_features)
            if norm == "frozen_bn":
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, key).copy_(getattr(child, key).detach())
            setattr(module, child_name, new)
        else:
            _swap_norm(child, norm)


def _freeze_until(children: list[tuple[str, nn.Module]], tap_names: list[str], frozen_stages: int) -> None:
    """Freeze every child up to and including the tap of the `frozen_stages`-th level."""
    if frozen_stages <= 0:
        return
    if frozen_stages > len(tap_names):
        raise ConfigError(f"model.frozen_stages is {frozen_stages}; at most {len(tap_names)} (the number of strides).")
    stop = tap_names[frozen_stages - 1]
    for name, module in children:
        for p in module.parameters():
            p.requires_grad_(False)
        if name == stop:
            break


def build_fpn_backbone(
    name: str,
    strides: Sequence[int],
    fpn_channels: int,
    extra: str = "pool",
    weights: str | None = None,
    norm: str | None = None,
    frozen_stages: int = 0,
    pretrained: bool = False,
) -> nn.Module:
    """Backbone by name + FPN; outputs an ordered dict of `fpn_channels`-wide maps with `.out_channels`."""
    body, return_layers, channels, kind = multiscale_body(name, strides, weights, norm, frozen_stages, pretrained)
    extra_block = _extra_block(extra, fpn_channels)
    if kind == "timm":
        return TimmWithFPN(body, channels, fpn_channels, extra_block)  # type: ignore[arg-type]
    return carry_reports(body, BackboneWithFPN(body, return_layers, channels, fpn_channels, extra_blocks=extra_block))


def fpn_strides(strides: Sequence[int], extra: str) -> list[int]:
    """Strides of the maps an FPN backbone returns (the extra levels halve the last one)."""
    last = strides[-1]
    return [*strides, *({"pool": [last * 2], "p6p7": [last * 2, last * 4]}.get(extra, []))]
