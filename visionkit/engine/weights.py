"""Pretrained weights: fetched through each library's own cache, loaded where shapes match, and reported.

timm models read the Hugging Face hub cache (`HF_HOME`/`HF_HUB_CACHE`, offline with `HF_HUB_OFFLINE=1`);
torchvision weights read the torch.hub cache (`$TORCH_HOME/hub/checkpoints`). `load_matching` loads any
state dict into a model where names and shapes agree, leaves a class head of another size freshly
initialised, and returns a `LoadReport` of what was loaded, skipped and re-initialised.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionkit.engine import distributed
from visionkit.engine.checkpoint import load_failure
from visionkit.errors import ConfigError

_SKIP = contextvars.ContextVar("visionkit_skip_pretrained", default=False)


@dataclass
class LoadReport:
    """What `load_matching` did: tensors loaded, skipped (and why), and class heads re-initialised."""

    what: str  # e.g. "timm/resnet18" or "backbone resnet50"
    source: str  # e.g. "hf-hub:timm/resnet18.a1_in1k", a cache file or a local path
    loaded: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # file, model
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: left as initialised
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)  # head layer -> (file, model) classes
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        """File tensors not loaded: absent from the model or of another shape (re-initialised heads included)."""
        return [*self.unexpected, *self.mismatched]

    def summary(self) -> str:
        """One line: the source, how many tensors were loaded, which heads were re-initialised, what was skipped."""
        parts = [f"pretrained {self.what} ({self.source}): loaded {len(self.loaded)} tensors"]
        for layer, (old, new) in self.heads.items():
            parts.append(f"re-initialised head {layer} ({old} -> {new} classes)")
        other = [k for k in self.mismatched if not _under(k, self.heads)]
        detail = []
        if self.unexpected:
            detail.append(f"not in the model: {_few(self.unexpected)}")
        if other:
            detail.append(f"shape differs: {_few(other)}")
        parts.append(f"skipped {len(self.unexpected) + len(other)}" + (f" ({'; '.join(detail)})" if detail else ""))
        fresh = [k for k in self.missing if not _under(k, self.heads)]
        if fresh:
            parts.append(f"{len(fresh)} model tensors not in the file, left initialised ({_few(fresh)})")
        return "; ".join(parts + self.notes)


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _under(key: str, layers: Iterable[str]) -> bool:
    return any(key.startswith(layer + ".") for layer in layers)


def _is_weight(key: str) -> bool:
    return not key.endswith("num_batches_tracked")  # a counter, not a weight; frozen norms do not keep it


def load_matching(
    model: nn.Module,
    state: Mapping[str, Any],
    what: str,
    source: str,
    heads: Iterable[str] = (),
    rename: Callable[[str], str] | None = None,
) -> LoadReport:
    """Load the tensors of `state` whose name and shape match `model`; layers in `heads` of another size stay new."""
    heads = tuple(heads)
    own = model.state_dict()
    report = LoadReport(what, source)
    usable: dict[str, torch.Tensor] = {}
    for raw_key, value in state.items():
        key = rename(raw_key) if rename else raw_key
        if not isinstance(value, torch.Tensor) or not _is_weight(key):
            continue
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched[key] = (tuple(value.shape), tuple(own[key].shape))
            head = next((h for h in heads if key.startswith(h + ".")), None)
            if head is not None and value.ndim and own[key].ndim:
                report.heads.setdefault(head, (int(value.shape[0]), int(own[key].shape[0])))
        else:
            usable[key] = value
    if not usable:
        raise ConfigError(
            f"{what}: {source} shares no tensor with the model (file keys e.g. {list(state)[:3]}, model keys e.g. "
            f"{list(own)[:3]}); give weights saved from the same architecture."
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    report.missing = [k for k in own if k not in usable and _is_weight(k)]
    return report


def load_model_weights(module: nn.Module, state: Mapping[str, Any], source: str | Path) -> None:
    """Load a checkpoint's full state dict strictly; a misfit is a ConfigError naming the file and first tensor."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(misfit_message(module.state_dict(), state, source, exc)) from None


def misfit_message(own: Mapping[str, Any], state: Mapping[str, Any], source: str | Path, exc: Exception) -> str:
    """One paragraph: which tensors of `state` (read from `source`) do not fit a model whose state is `own`."""
    shape = {k: tuple(v.shape) for k, v in own.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = {
        k: (tuple(v.shape), shape[k])
        for k, v in state.items()
        if k in shape and isinstance(v, torch.Tensor) and tuple(v.shape) != shape[k]
    }
    found = []
    if mismatched:
        key, (old, new) = next(iter(mismatched.items()))
        found.append(f"tensor '{key}' has shape {list(old)} in the file but {list(new)} in the model")
    if missing:
        found.append(f"the model's tensor '{missing[0]}' is not in the file")
    if unexpected:
        found.append(f"the file's tensor '{unexpected[0]}' is not in the model")
    if not found:  # e.g. a module's own load hook refused it
        found.append(str(exc).strip().splitlines()[0][:300])
    counts = f"{len(mismatched)} of another shape, {len(missing)} missing, {len(unexpected)} unexpected"
    return (
        f"The weights in '{source}' do not fit the model its config builds: {'; '.join(found)} ({counts}). "
        "Likely causes: a model.* setting differs from the one the checkpoint was trained with (drop that "
        "override); or the model came from a plugin that is not loaded now (pass --plugin NAME, or list it under "
        "`plugins:`); or the file is a checkpoint of another task or model."
    )


def announce(model: nn.Module, report: LoadReport) -> LoadReport:
    """Keep the report on `model.weights_reports` and print its one-line summary (on the main process only)."""
    reports = getattr(model, "weights_reports", None)
    if not isinstance(reports, list):
        reports = []
        model.weights_reports = reports
    reports.append(report)
    if distributed.is_main():
        print(report.summary(), flush=True)
    return report


def weights_reports(model: nn.Module) -> list[LoadReport]:
    """Every report kept on `model` and its submodules, in module order."""
    return [r for m in model.modules() for r in getattr(m, "weights_reports", None) or []]


def carry_reports(source: nn.Module, target: nn.Module) -> nn.Module:
    """Keep `source`'s reports on `target` (a wrapper such as IntermediateLayerGetter copies children, not them)."""
    reports = weights_reports(source)
    if reports and not weights_reports(target):
        target.weights_reports = reports
    return target


@contextmanager
def skip_pretrained() -> Iterator[None]:
    """Build models without fetching or loading pretrained weights (a checkpoint's state dict replaces them)."""
    token = _SKIP.set(True)
    try:
        yield
    finally:
        _SKIP.reset(token)


def loading_enabled() -> bool:
    """False inside `skip_pretrained()`."""
    return not _SKIP.get()


def check_choice(pretrained: object, weights: str | None, key: str = "model.weights") -> bool:
    """Validate `model.pretrained` against a weights file; True when pretrained weights are to be fetched."""
    if pretrained not in (True, False, None):
        raise ConfigError(f"model.pretrained is {pretrained!r}; accepted: true or false.")
    if pretrained and weights:
        raise ConfigError(
            f"model.pretrained=true and {key}={weights} both ask for weights; keep one: the library's cache "
            f"(pretrained) or the local file ({key})."
        )
    return bool(pretrained)


def read_state_file(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """A state dict from a local .pth/.pt/.safetensors file (a visionkit or DDP checkpoint is unwrapped)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"{key} file '{file}' does not exist; give a local .pth or .safetensors state dict "
            "(or model.pretrained=true to use the library's download cache)."
        )
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, not a pickle traceback
        reason = load_failure(file, exc)
        raise ConfigError(f"{key} file '{file}' could not be read as a state dict: {reason}.") from None
    for inner in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(inner), dict):
            state = state[inner]
            break
    if not isinstance(state, dict):
        raise ConfigError(f"{key} file '{file}' holds a {type(state).__name__}, not a state dict.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def failure_reason(exc: BaseException) -> str:
    """An exception as one short line: its type and the start of its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
