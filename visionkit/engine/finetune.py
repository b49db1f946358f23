"""Fine-tuning controls: frozen parameters (`model.freeze`) and unfreezing them later (`trainer.unfreeze_at`)."""

from __future__ import annotations

from typing import Any

from torch import nn


def apply_freeze(module: nn.Module, cfg: dict[str, Any]) -> None:
    """Freeze the parameters whose names match `model.freeze` patterns."""


def finetune_callbacks(cfg: dict[str, Any], module: nn.Module) -> list[Any]:
    """Callbacks fine-tuning needs (e.g. unfreezing at `trainer.unfreeze_at`)."""
    return []
