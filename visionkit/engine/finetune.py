"""Fine-tuning controls: frozen parameters (`model.freeze`) and unfreezing them later (`trainer.unfreeze_at`).

Frozen parameters get `requires_grad=False`, so no gradient is computed for them, but they stay in the
optimizer: torch optimizers skip parameters whose `.grad` is None (weight decay included), so unfreezing
needs no new optimizer and a resumed run has the same optimizer structure whatever the epoch. BatchNorm
layers whose parameters are all frozen stay in eval mode while frozen (their running statistics are frozen
too). Whether the parameters are frozen is derived from the epoch, so a resume across `unfreeze_at` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from visionkit.engine import distributed as dist
from visionkit.engine.patterns import name_matches, unmatched_pattern_message
from visionkit.errors import ConfigError

FREEZE_ATTR = "_visionkit_freeze"  # the FreezeState apply_freeze leaves on the model


def freeze_patterns(cfg: dict[str, Any]) -> list[str]:
    """The `model.freeze` patterns of a config (empty when the model spec has none)."""
    spec = cfg.get("model")
    patterns = spec.get("freeze") if isinstance(spec, dict) else None
    if patterns is None:
        return []
    return [patterns] if isinstance(patterns, str) else list(patterns)


def validate_finetune(cfg: dict[str, Any]) -> None:
    """Check `model.freeze` and `trainer.unfreeze_at` without building the model."""
    spec = cfg.get("model")
    raw = spec.get("freeze") if isinstance(spec, dict) else None
    if raw is not None:
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(p, str) and p for p in items):
            raise ConfigError(
                f"model.freeze must be a list of parameter-name patterns (e.g. ['features.*'] or ['backbone']), "
                f"got {raw!r}."
            )
    epoch = cfg.get("trainer", {}).get("unfreeze_at")
    if epoch is None:
        return
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ConfigError(f"trainer.unfreeze_at must be a positive epoch number or null, got {epoch!r}.")
    if not freeze_patterns(cfg):
        raise ConfigError(
            f"trainer.unfreeze_at is {epoch} but model.freeze is empty: there is nothing to unfreeze. "
            "Set model.freeze (e.g. model.freeze=[backbone]) or remove trainer.unfreeze_at."
        )


@dataclass
class FreezeState:
    """The parameters and BatchNorm layers `model.freeze` froze, and whether they are frozen now."""

    patterns: list[str]
    params: list[nn.Parameter] = field(default_factory=list)  # trainable before freezing
    norms: list[nn.Module] = field(default_factory=list)  # BatchNorm layers whose parameters are all frozen
    frozen: bool = True

    def set_frozen(self, frozen: bool) -> None:
        """Freeze or unfreeze the parameters (frozen BatchNorm layers follow through their forward hook)."""
        self.frozen = frozen
        for p in self.params:
            p.requires_grad_(not frozen)
            if frozen:
                p.grad = None


def apply_freeze(module: nn.Module, cfg: dict[str, Any]) -> None:
    """Freeze the parameters whose names match `model.freeze` patterns."""
    patterns = freeze_patterns(cfg)
    if not patterns:
        return
    named = list(module.named_parameters())
    names = [n for n, _ in named]
    for pattern in patterns:
        if not any(name_matches(n, pattern) for n in names):
            raise ConfigError(unmatched_pattern_message("model.freeze", pattern, names))
    matched = {id(p) for n, p in named if name_matches(n, patterns)}
    state = FreezeState(patterns, [p for n, p in named if id(p) in matched and p.requires_grad])
    if not any(p.requires_grad for n, p in named if id(p) not in matched):
        raise ConfigError(
            f"model.freeze {patterns} freezes every trainable parameter of the model: nothing would train "
            "(the loss would have no gradient). Freeze part of the model, such as its backbone, and leave the head."
        )
    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            own = list(layer.parameters(recurse=False))
            if all(id(p) in matched for p in own) if own else name_matches(f"{name}.weight", patterns):
                state.norms.append(layer)
                layer.register_forward_pre_hook(_frozen_norm_hook(state))
    for p in state.params:  # a safety net for code that sets requires_grad again (multi-optimizer toggling)
        p.register_post_accumulate_grad_hook(_frozen_grad_hook(state))
    state.set_frozen(True)
    setattr(module, FREEZE_ATTR, state)
    if dist.is_main():
        count = sum(p.numel() for p in state.params)
        until = cfg["trainer"].get("unfreeze_at")
        print(
            f"frozen {len(state.params)} tensors ({_human(count)} parameters) matching {patterns}"
            + (f"; {len(state.norms)} BatchNorm layers kept in eval mode" if state.norms else "")
            + (f"; trained again from epoch {until}" if until else ""),
            flush=True,
        )


def frozen_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters `model.freeze` froze (they still belong in the optimizer, for `unfreeze_at`)."""
    state = getattr(module, FREEZE_ATTR, None)
    return list(state.params) if state is not None else []


def _frozen_norm_hook(state: FreezeState) -> Any:
    # A plain closure: deep copies of the model (EMA) share it instead of copying the state.
    def hook(layer: nn.Module, args: Any) -> None:
        if state.frozen:
            layer.training = False  # the trainer calls model.train() each epoch; frozen BN stays in eval

    return hook


def _frozen_grad_hook(state: FreezeState) -> Any:
    def hook(param: nn.Parameter) -> None:
        if state.frozen:
            param.grad = None

    return hook


def _human(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)
