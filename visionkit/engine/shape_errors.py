"""Shape and channel mismatches in a forward pass, told as: which layer expected what, got what, and the key to change.

PyTorch reports a mismatch deep inside a functional call ("mat1 and mat2 shapes cannot be multiplied (32x512 and
128x10)"). The layer that raised it is the innermost `nn.Module` whose frame is on the error's traceback; its
input is that frame's first argument. From the layer's own sizes (in_features, in_channels, num_features) and the
input's shape the message says what it expected and what it got, and the config and data facts say which key to
change (data.image_size, data.channels, model.<key>).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from visionkit.errors import ConfigError
from visionkit.registry import MODELS

# Fragments of PyTorch's messages for size mismatches in a layer (matmul, conv, norms, cat, broadcast, losses).
SHAPE_MESSAGES = (
    "shapes cannot be multiplied",
    "channels, but got",
    "running_mean should contain",
    "normalized_shape",
    "sizes of tensors must match",
    "the size of tensor a",
    "size mismatch",
    "expected number of channels in input",
    "expected input batch_size",
    "must match the size",
    "target size",
    "shape '[",
    "input.size(-1) must be equal to input_size",
)
SIZE_KEYS = ("image_size", "img_size", "input_size", "in_features", "hidden", "hidden_size", "num_features")
CHANNEL_KEYS = ("in_chans", "in_channels", "channels")


def is_shape_error(exc: BaseException) -> bool:
    """True for a RuntimeError/ValueError whose message is one of PyTorch's size-mismatch messages."""
    if not isinstance(exc, (RuntimeError, ValueError)):
        return False
    text = str(exc).lower()
    return any(fragment in text for fragment in SHAPE_MESSAGES)


def module_frames(exc: BaseException) -> list[tuple[nn.Module, Any]]:
    """(module, first argument) of each traceback frame running a module's method inside a module call, outermost first.

    Frames before the first `Module.__call__` are left out: a mismatch in e.g. `load_state_dict` is not a forward's.
    """
    found: list[tuple[nn.Module, Any]] = []
    inside = False
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_locals.get("self")
        inside = inside or (
            isinstance(module, nn.Module) and frame.f_code.co_name in ("_call_impl", "_wrapped_call_impl")
        )
        if inside and isinstance(module, nn.Module):
            code = frame.f_code
            names = code.co_varnames[: code.co_argcount]
            found.append((module, frame.f_locals.get(names[1]) if len(names) > 1 else None))
        tb = tb.tb_next
    return found


def culprit(exc: BaseException) -> tuple[nn.Module, Any] | None:
    """The innermost module on the traceback and the input it was given (the first tensor-like argument seen)."""
    frames = module_frames(exc)
    if not frames:
        return None
    module = frames[-1][0]
    inputs = [arg for m, arg in frames if m is module and arg is not None]  # forward(x) -> _conv_forward(x, ...)
    return module, (inputs[-1] if inputs else None)


def layer_name(module: nn.Module, roots: Mapping[str, nn.Module | None]) -> str:
    """'head.2' inside the model, 'loss' for the loss, else the class name."""
    for prefix, root in roots.items():
        if root is None:
            continue
        root = getattr(root, "module", root) if type(root).__name__ == "DistributedDataParallel" else root
        for name, sub in root.named_modules():
            if sub is module:
                return ".".join(p for p in (prefix, name) if p) or "model"
    return type(module).__name__


def shape_text(x: Any) -> str:
    """[32, 1, 8, 8] for a tensor, the type name otherwise."""
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def mismatch(module: nn.Module, x: Any, message: str) -> tuple[str, str, int | None, int | None]:
    """(kind, 'expects ... but got ...' text, expected, got) for the layer's mismatch; kind: features|channels|other."""
    tensor = x if isinstance(x, torch.Tensor) else None
    if isinstance(module, nn.Linear):
        got = tensor.shape[-1] if tensor is not None and tensor.dim() else None
        if got is None:
            m = re.search(r"\((\d+)x(\d+) and (\d+)x(\d+)\)", message)
            got = int(m.group(2)) if m else None
        return "features", f"expects {module.in_features} input features but got {got}", module.in_features, got
    if isinstance(module, nn.modules.conv._ConvNd):
        spatial = len(module.kernel_size)
        got = None
        if tensor is not None and tensor.dim() in (spatial + 1, spatial + 2):
            got = int(tensor.shape[1] if tensor.dim() == spatial + 2 else tensor.shape[0])
        expected = module.in_channels
        return "channels", f"expects {expected} input {_channels(expected)} but got {got}", expected, got
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        expected = getattr(module, "num_features", None) or module.num_channels
        got = int(tensor.shape[1]) if tensor is not None and tensor.dim() > 1 else None
        return "channels", f"expects {expected} {_channels(expected)} but got {got}", expected, got
    if isinstance(module, nn.LayerNorm):
        want = list(module.normalized_shape)
        got_shape = list(tensor.shape[-len(want) :]) if tensor is not None else None
        return "features", f"expects trailing size {want} but got {got_shape}", None, None
    return "other", "cannot take its input", None, None


def _channels(count: int | None) -> str:
    return "channel" if count == 1 else "channels"


def explain(
    exc: BaseException,
    cfg: Mapping[str, Any],
    facts: Any = None,
    model: nn.Module | None = None,
    loss: nn.Module | None = None,
) -> ConfigError | None:
    """A ConfigError naming the layer, what it expected and got, and the key to change; None if not a shape error."""
    if not is_shape_error(exc):
        return None
    found = culprit(exc)
    if found is None:
        return None
    module, x = found
    message = str(exc).strip().splitlines()[0]
    name = layer_name(module, {"": model, "loss": loss})
    kind, what, expected, got = mismatch(module, x, message)
    hint = key_hint(kind, cfg, facts, expected, got, first_layer=_is_first_layer(module, model))
    text = f"layer '{name}' ({type(module).__name__}) {what} (input shape {shape_text(x)}); {hint} (PyTorch: {message})"
    return ConfigError(text)


def _is_first_layer(module: nn.Module, model: nn.Module | None) -> bool:
    """True when `module` is the model's first layer with weights (the one that sees the images)."""
    if model is None:
        return False
    for sub in model.modules():
        if isinstance(sub, (nn.modules.conv._ConvNd, nn.Linear)):
            return sub is module
    return False


def _model_spec(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """(model name, keys set under `model:`, keyword names its builder accepts)."""
    spec = cfg.get("model") or {}
    name, given = (spec, {}) if isinstance(spec, str) else (spec.get("name", "?"), {k: v for k, v in spec.items()})
    given.pop("name", None)
    accepted: list[str] = []
    try:
        builder = MODELS.get(name, [cfg["task"]]) if cfg.get("task") else None
        if builder is not None:
            accepted = list(inspect.signature(builder).parameters)
    except Exception:  # noqa: BLE001 - a hint only; the mismatch itself is still reported
        accepted = list(given)
    return str(name), given, accepted


def key_hint(
    kind: str, cfg: Mapping[str, Any], facts: Any, expected: int | None, got: int | None, first_layer: bool = False
) -> str:
    """Which config key to change for this kind of mismatch, with the values in play."""
    name, given, accepted = _model_spec(cfg)
    data = cfg.get("data") or {}
    size = getattr(facts, "image_size", None) or data.get("image_size")
    channels = getattr(facts, "channels", None) or data.get("channels")
    if kind == "features":
        for key in ("image_size", "img_size", "input_size"):  # a model size set by hand, unlike the data's
            if key in given and size and given[key] != size:
                return (
                    f"model.{key} is {given[key]} but the images are {size} px (data.image_size): set "
                    f"model.{key}={size} (or remove it to follow the data), or data.image_size={given[key]}"
                )
        scale = ""
        if expected and got and size:
            side = size * math.sqrt(expected / got)
            if abs(side - round(side)) < 1e-6 and round(side) > 0:
                scale = f" (features grow with the image area: data.image_size={round(side)} would give {expected})"
        keys = [k for k in accepted if k in SIZE_KEYS or k in ("width", "depth")]
        model_part = (
            f"or the model's size settings ({', '.join(f'model.{k}' for k in keys)})"
            if keys
            else f"or the layer in model '{name}', which sets this size itself"
        )
        return f"the input size comes from data.image_size (now {size}){scale}: change it {model_part}"
    if kind == "channels":
        for key in CHANNEL_KEYS:
            if key in given and channels and given[key] != channels:
                return (
                    f"model.{key} is {given[key]} but the images have {channels} {_channels(channels)} "
                    f"(data.channels): set model.{key}={channels} (or remove it to follow the data), "
                    f"or data.channels={given[key]}"
                )
        if first_layer or (got is not None and got == channels):
            return _image_channels_hint(cfg, given, accepted, expected, got if got is not None else channels)
        keys = [k for k in accepted if k in ("width", "depth", "mults", "channels", "decoder_channels", "hidden")]
        where = ", ".join(f"model.{k}" for k in keys) if keys else f"the layers of model '{name}'"
        return f"an inner layer's channels disagree with the layer before it: check {where}"
    keys = [k for k in accepted if k in SIZE_KEYS or k in ("width", "depth", "strides")]
    extra = f" and the model's settings ({', '.join(f'model.{k}' for k in keys)})" if keys else ""
    return f"check data.image_size (now {size}; some models need a multiple of their total stride){extra}"


def _image_channels_hint(
    cfg: Mapping[str, Any], given: Mapping[str, Any], accepted: list[str], expected: int | None, got: int | None
) -> str:
    """Advice for a first layer built for `expected` channels but fed `got`: convert the images, or change the model.

    Never advises a value already set: when data.channels already asks for `expected`, either the dataset spec's
    own `channels` overrides it or the dataset does not convert its images, and that is said instead.
    """
    data = cfg.get("data") or {}
    model_keys = [k for k in accepted if k in CHANNEL_KEYS]
    model_key = model_keys[0] if model_keys and got and given.get(model_keys[0]) != got else None
    model_fix = f"model.{model_key}={got}" if model_key else ""
    have = f"the images have {got} {_channels(got)}"
    if expected is None or data.get("channels") != expected:
        return f"{have}: set data.channels={expected} to convert them" + (f", or {model_fix}" if model_fix else "")
    or_set = f", or set {model_fix}" if model_fix else ""
    spec = data.get("train")
    own = spec.get("channels") if isinstance(spec, Mapping) else None
    if own is not None and own != expected:
        return f"{have}: data.train.channels={own} overrides data.channels={expected}; remove it{or_set}"
    name = spec if isinstance(spec, str) else spec.get("name", "?") if isinstance(spec, Mapping) else "?"
    return (
        f"{have} although data.channels is {expected}: dataset '{name}' does not convert its images to "
        f"data.channels; give it {expected}-channel images{or_set}"
    )


@contextlib.contextmanager
def translated_shape_errors(trainer: Any) -> Iterator[None]:
    """Turn a shape/channel error of a forward pass before the first update into a ConfigError naming the layer
    and the key to change (`trainer` gives cfg, facts, module, task and state, when it has them yet)."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        state = getattr(trainer, "state", None)
        if state is not None and state.step > 0:  # a mismatch after training started is not a config problem
            raise
        task = getattr(trainer, "task", None)
        loss = getattr(task, "loss_fn", None) if task is not None else None
        error = explain(exc, trainer.cfg, getattr(trainer, "facts", None), getattr(trainer, "module", None), loss)
        if error is None:
            raise
        raise error from None
