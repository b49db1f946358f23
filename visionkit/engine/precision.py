"""Devices (choosing one, finding a model's) and mixed precision through `torch.amp`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

from visionkit.errors import ConfigError


def select_device(name: str) -> torch.device:
    """Resolve `auto|cpu|cuda|cuda:N|mps`; under torchrun, `auto`/`cuda` use LOCAL_RANK's GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.device={name} but no CUDA GPU is available here; use trainer.device=cpu or auto."
            )
        index = device.index if device.index is not None else local_rank % torch.cuda.device_count()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={name} but only {torch.cuda.device_count()} GPU(s) exist.")
        return torch.device("cuda", index)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.device=mps but MPS is not available here; use trainer.device=cpu or auto.")
    return device


def device_of(model: Any) -> torch.device:
    """The device of a model's first parameter; the CPU for models without parameters (e.g. an ONNX session)."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16-mixed on GPUs with bf16, fp16-mixed on older GPUs, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    return "fp32"


def autocast_factory(precision: str, device: torch.device) -> Callable[[], Any]:
    """A zero-argument factory of the autocast context for this precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16

    def factory() -> Any:
        return torch.autocast(device_type=device.type, dtype=dtype)

    return factory


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16-mixed (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")
