"""Which layer a class activation map is taken from, and how its output becomes a BxCxHxW feature map."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.errors import ConfigError, did_you_mean

MAX_COMBINED_SIDE = 64  # multi-level outputs (an FPN) are combined at most this many cells a side


@dataclass
class LayerOutput:
    """What one module returned during the probe forward pass."""

    order: int  # position of its (last) call in execution order
    kind: str  # "map" (BxCxHxW), "tokens" (BxNxC), "levels" (dict/list of maps) or "other"
    shape: tuple[int, ...]  # the tensor's shape; the finest level's for "levels"; () for "other"
    text: str  # a short description for messages

    @property
    def spatial(self) -> bool:
        """True for an output with more than one spatial position."""
        if self.kind == "map":
            return self.shape[-1] * self.shape[-2] > 1
        return self.kind in ("tokens", "levels")


def _levels(output: Any) -> list[torch.Tensor]:
    """The 4-D tensors of a dict, list or tuple output, in order."""
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (list, tuple)) else []
    return [v for v in values if isinstance(v, torch.Tensor) and v.dim() == 4]


def describe(output: Any) -> tuple[str, tuple[int, ...], str]:
    """(kind, shape, text) of a module output; see LayerOutput."""
    if isinstance(output, torch.Tensor):
        shape = tuple(output.shape)
        if output.dim() == 4 and output.is_floating_point():
            return "map", shape, f"a tensor of shape {list(shape)}"
        if output.dim() == 3 and output.is_floating_point() and shape[1] > 1:
            return "tokens", shape, f"tokens of shape {list(shape)}"
        return "other", shape, f"a tensor of shape {list(shape)}"
    levels = _levels(output)
    if levels:
        finest = max(levels, key=lambda t: t.shape[-1] * t.shape[-2])
        return "levels", tuple(finest.shape), f"{len(levels)} feature maps ({type(output).__name__})"
    return "other", (), f"a {type(output).__name__}"


def probe(model: nn.Module, run: Callable[[], Any]) -> dict[str, LayerOutput]:
    """Run `run()` once without gradients and record what every named module of `model` returned."""
    seen: dict[str, LayerOutput] = {}
    counter = [0]
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            counter[0] += 1
            kind, shape, text = describe(output)
            seen[name] = LayerOutput(counter[0], kind, shape, text)  # a module called twice keeps its last call

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


class FeatureMap:
    """`reshape_transform` for pytorch_grad_cam: any supported layer output -> a BxCxHxW tensor.

    Tokens (BxNxC, e.g. a ViT block) drop their prefix tokens and fold into a square grid; channels-last
    maps are permuted; several levels (an FPN's dict) are resized to the finest level (at most
    MAX_COMBINED_SIDE a side) and stacked along channels. `valid` is the fraction (height, width) of the
    map that holds the image, when the model pads its input (torchvision detectors pad to a multiple of 32);
    `window` (top, left, bottom, right fractions) does the same for a model that pads on every side (a letterbox).
    """

    def __init__(self, channels_last: bool = False, prefix_tokens: int = 0) -> None:
        self.channels_last, self.prefix_tokens = channels_last, prefix_tokens
        self.valid: tuple[float, float] | None = None
        self.window: tuple[float, float, float, float] | None = None

    def __call__(self, output: Any) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self._crop(self._single(output))
        maps = [self._crop(m) for m in _levels(output)]
        height, width = max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps)
        shrink = min(1.0, MAX_COMBINED_SIDE / max(height, width))
        size = (max(1, round(height * shrink)), max(1, round(width * shrink)))
        return torch.cat([F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False) for m in maps], 1)

    def _single(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # B x N x C tokens
            grid = x[:, self.prefix_tokens :, :]
            side = math.isqrt(grid.shape[1])
            return grid.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        window = self.window or ((0.0, 0.0, *self.valid) if self.valid is not None else None)
        if window is None:
            return x
        height, width = x.shape[-2:]
        top = min(math.floor(height * window[0] + 1e-6), height - 1)
        left = min(math.floor(width * window[1] + 1e-6), width - 1)
        bottom = max(top + 1, math.ceil(height * window[2] - 1e-6))
        right = max(left + 1, math.ceil(width * window[3] - 1e-6))
        return x[..., top:bottom, left:right]


# -- choosing the layer ---------------------------------------------------------------------------------
def _timm_features(model: nn.Module) -> list[str]:
    """Module names of a timm model's feature_info entries (its stages), deepest last."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return []
    return [str(e["module"]) for e in info if isinstance(e, dict) and "module" in e]


def _timm_channels(model: nn.Module, name: str) -> int | None:
    info = getattr(model, "feature_info", None)
    if isinstance(info, list):
        for entry in info:
            if isinstance(entry, dict) and entry.get("module") == name:
                return int(entry.get("num_chs", 0)) or None
    return None


def _last_spatial(seen: dict[str, LayerOutput], skip: Callable[[str, LayerOutput], bool]) -> str | None:
    ranked = sorted(((o.order, n) for n, o in seen.items() if o.kind in ("map", "tokens") and o.spatial), reverse=True)
    return next((n for _, n in ranked if not skip(n, seen[n])), None)


def auto_layer(kind: str, model: nn.Module, seen: dict[str, LayerOutput], num_classes: int) -> str:
    """The default target layer of a classification, segmentation or detection model."""
    names = dict(model.named_modules())
    if kind == "classification":
        # a timm model's deepest stage with more than one position (tiny inputs shrink the last to 1x1), else
        # torchvision-style `features` / `layer4`, else the last layer with a spatial output
        for candidate in [*_timm_features(model)[::-1], "features", "layer4"]:
            if candidate in names and candidate in seen and seen[candidate].spatial:
                if seen[candidate].kind == "tokens" and f"{candidate}.norm1" in seen:
                    # a ViT block: only the class token reaches the head after the last block, so its patch
                    # tokens get no gradient; the block's first norm feeds the attention that mixes them in
                    return f"{candidate}.norm1"
                return candidate
        found = _last_spatial(seen, lambda n, o: False)
    elif kind == "segmentation":
        blocks = getattr(model, "blocks", None)
        if hasattr(model, "encoder") and isinstance(blocks, nn.ModuleList) and len(blocks):  # the U-Net
            return f"blocks.{len(blocks) - 1}"
        backbone = getattr(getattr(model, "net", None), "backbone", None)
        if isinstance(backbone, nn.Module) and list(backbone.named_children()):  # torchvision FCN/DeepLab/LR-ASPP
            return f"net.backbone.{list(backbone.named_children())[-1][0]}"
        found = _last_spatial(seen, lambda n, o: o.kind == "map" and o.shape[1] == num_classes)
    else:
        backbones = sorted((n for n in names if n.split(".")[-1] == "backbone" and n in seen), key=len)
        if backbones and seen[backbones[0]].kind in ("map", "levels"):
            return backbones[0]
        found = _last_spatial(seen, lambda n, o: False)
    if found is None:
        raise ConfigError(
            "This model has no layer with a spatial output to take a class activation map from (a model such as "
            "'mlp' works on flattened pixels). Use a convolutional or vision-transformer model (small_cnn, "
            "timm/resnet18, unet, ...)."
        )
    return found


def spatial_names(seen: dict[str, LayerOutput], limit: int = 12) -> list[str]:
    """The last `limit` layers (in execution order) whose output a CAM can use."""
    usable = sorted((o.order, n) for n, o in seen.items() if o.spatial)
    return [n for _, n in usable[-limit:]]


def resolve_layer(
    kind: str, model: nn.Module, wanted: str, method: str, seen: dict[str, LayerOutput], num_classes: int
) -> tuple[str, nn.Module, FeatureMap]:
    """The target layer's name, module and output transform; a wrong or unusable name is a ConfigError."""
    modules = dict(model.named_modules())
    name = auto_layer(kind, model, seen, num_classes) if wanted in ("auto", "", None) else str(wanted)
    valid = ", ".join(spatial_names(seen))
    if name not in modules or not name:
        raise ConfigError(
            f"--target-layer '{name}' is not a module of this model.{did_you_mean(name, [n for n in modules if n])} "
            f"Layers with a spatial output (last ones): {valid}. Any name from model.named_modules() may be given."
        )
    out = seen.get(name)
    if out is None:
        raise ConfigError(
            f"Layer '{name}' does not run when the model predicts (e.g. an auxiliary head used only in training). "
            f"Layers that do, with a spatial output: {valid}."
        )
    if out.kind == "levels" and method not in ("eigencam",):
        raise ConfigError(
            f"Layer '{name}' returns {out.text}; only --method eigencam combines several feature maps. Use "
            f"eigencam or a layer that returns one tensor, such as: {valid}."
        )
    if out.kind == "other" or (out.kind == "map" and not out.spatial):
        raise ConfigError(
            f"Layer '{name}' returns {out.text}, not a feature map with more than one spatial position; "
            f"CAMs need a BxCxHxW (or BxNxC token) output. Layers that have one: {valid}."
        )
    prefix = 0
    if out.kind == "tokens":
        count = out.shape[1]
        prefix = int(getattr(model, "num_prefix_tokens", count - math.isqrt(count) ** 2))
        if prefix < 0 or math.isqrt(count - prefix) ** 2 != count - prefix:
            raise ConfigError(
                f"Layer '{name}' returns {out.text}; its {count} tokens (less {prefix} prefix tokens) do not form "
                f"a square grid. Pick a layer with a BxCxHxW output: {valid}."
            )
    channels = _timm_channels(model, name)
    channels_last = bool(out.kind == "map" and channels and out.shape[1] != channels and out.shape[-1] == channels)
    return name, modules[name], FeatureMap(channels_last=channels_last, prefix_tokens=prefix)
