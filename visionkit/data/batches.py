"""Batches as the core handles them: moved to a device, counted in samples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def to_device(obj: Any, device: torch.device) -> Any:
    """Recursively move tensors to `device` (non-blocking)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def batch_size_of(batch: Any, _nested: bool = False) -> int:
    """Samples in a batch: dim 0 of its first tensor, or the length of a nested list of per-sample tensors.

    `(images, labels)` and `{"image": images, ...}` count images.shape[0]; `([img, img], [target, target])`
    (detection-style lists) counts 2.
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping) and batch:
        return batch_size_of(next(iter(batch.values())), True)
    if isinstance(batch, (list, tuple)) and batch:
        if _nested and isinstance(batch[0], torch.Tensor):
            return len(batch)  # a list of per-sample tensors inside the batch
        return batch_size_of(batch[0], True)
    return 1
