"""Pretrained weights from each library's own cache: the Hugging Face hub for timm models, torch.hub for
torchvision's (offline from a filled cache; never a download the user did not ask for). `visionkit.engine.weights`
loads what they fetch into a model and reports it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from visionkit.engine import distributed
from visionkit.engine.checkpoint import load_failure
from visionkit.engine.weights import (
    LoadReport,
    announce,
    check_choice,
    failure_reason,
    load_matching,
    loading_enabled,
    read_state_file,
)
from visionkit.errors import ConfigError


def offline() -> bool:
    """True when `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set; visionkit then never downloads, from any hub."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().lower() in {"1", "on", "yes", "true"}


def hub_file(url: str) -> Path:
    """Where torch.hub keeps (or would keep) the file of `url`: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torch_hub_state_dict(url: str, what: str, how: str) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict through torch.hub's cache (downloaded once unless offline); `how` says how to fetch it by hand."""
    file = hub_file(url)
    if not file.is_file():
        if offline():
            _missing_hub_file(url, what, how, "HF_HUB_OFFLINE is set (no download)")
        try:
            torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=distributed.is_main(), check_hash=True, weights_only=True
            )
        except Exception as exc:  # no network, HTTP error, hash mismatch: the same advice applies
            _missing_hub_file(url, what, how, f"the download failed ({failure_reason(exc)})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = load_failure(file, exc)
        raise ConfigError(f"{what}: the cached file '{file}' could not be read ({reason}); delete it.") from None
    return state, str(file)


def _missing_hub_file(url: str, what: str, how: str, reason: str) -> None:
    file = hub_file(url)
    raise ConfigError(
        f"model.pretrained=true: the weights of {what} are not in the torch.hub cache '{file}' and {reason}. "
        f"Pre-download them once on a machine with network access, with the same TORCH_HOME: {how}, or copy "
        f"{url} to '{file}'. Or give a local state dict with model.weights=/path/to/file.pth."
    )


def hf_state_dict(hub_id: str, filename: str | None, what: str, create: str) -> tuple[dict[str, torch.Tensor], str]:
    """A timm state dict through the Hugging Face hub cache (`timm.models.load_state_dict_from_hf`)."""
    from huggingface_hub import constants
    from timm.models import load_state_dict_from_hf

    repo, _, revision = hub_id.partition("@")
    try:
        state = load_state_dict_from_hf(hub_id, filename) if filename else load_state_dict_from_hf(hub_id)
    except Exception as exc:  # offline, no network, missing repo or file: one message with the cache to fill
        cache = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
        why = failure_reason(exc)
        reason = "HF_HUB_OFFLINE is set (no download)" if offline() else f"could not be downloaded ({why})"
        pin = f" --revision {revision}" if revision else ""
        raise ConfigError(
            f"model.pretrained=true: the weights of {what} (Hugging Face hub repo {repo}) are not in the cache "
            f"'{cache}' and {reason}. Pre-download them once on a machine with network access, with the same "
            f"HF_HOME/HF_HUB_CACHE: `hf download {repo}{pin}` (`huggingface-cli download` in older "
            f"huggingface_hub) or `python -c \"import timm; timm.create_model('{create}', pretrained=True)\"`; "
            "then HF_HUB_OFFLINE=1 works. Or give a local file with model.weights=/path/to/model.safetensors."
        ) from None
    return state, f"hf-hub:{hub_id}"


# -- timm ------------------------------------------------------------------------------------------------


def load_timm(
    model: nn.Module, arch: str, pretrained: bool, weights: str | None, in_chans: int, what: str, key: str
) -> LoadReport | None:
    """`pretrained` (timm's hub cache) or a local `weights` file into a timm model, classifier or `features_only`."""
    if not loading_enabled() or not (check_choice(pretrained, weights, key) or weights):
        return None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if weights:
        state, source = read_state_file(weights, key), str(Path(weights).expanduser())
    else:
        state, source = _timm_hub_state(arch, cfg, what)
    notes: list[str] = []
    state = _timm_filter(state, model, arch, notes)
    _adapt_first_conv(state, cfg, in_chans, notes)
    own = set(model.state_dict())
    classifier = cfg.get("classifier") or ()
    report = load_matching(
        model, state, what, source, heads=(classifier,) if isinstance(classifier, str) else classifier,
        rename=lambda k: _feature_key(k, own),
    )  # fmt: skip
    report.notes += notes
    return announce(model, report)


def _timm_hub_state(arch: str, cfg: Mapping[str, Any], what: str) -> tuple[dict[str, torch.Tensor], str]:
    tag = cfg.get("tag")
    create = f"{cfg.get('architecture') or arch}.{tag}" if tag else arch
    if cfg.get("custom_load"):
        raise ConfigError(
            f"{what}: timm loads these pretrained weights with a custom loader (not a state dict); convert them "
            "once with timm and give the saved file as model.weights."
        )
    if cfg.get("hf_hub_id"):
        return hf_state_dict(cfg["hf_hub_id"], cfg.get("hf_hub_filename"), what, create)
    if cfg.get("url"):
        how = f"`python -c \"import timm; timm.create_model('{create}', pretrained=True)\"`"
        return torch_hub_state_dict(cfg["url"], what, how)
    raise ConfigError(
        f"{what}: timm has no pretrained weights for '{arch}'. Pick a tagged name with weights "
        f"(timm.list_pretrained('{arch.split('.')[0]}*')) or give a local file with model.weights."
    )


def _timm_filter(state: dict[str, torch.Tensor], model: nn.Module, arch: str, notes: list[str]) -> dict:
    """Apply the model family's `checkpoint_filter_fn`, as timm's own loader does (foreign formats, resizing)."""
    import timm.models

    module = sys.modules.get(timm.models.model_entrypoint(arch).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    target = getattr(model, "model", model)  # FeatureGetterNet keeps the whole network as .model
    try:
        return filter_fn(dict(state), target)
    except (AttributeError, KeyError, TypeError, RuntimeError):
        # a feature-extractor wrapper may lack attributes the filter reads; timm-format files need no filtering
        notes.append("timm's checkpoint filter did not apply to this wrapper; loaded the file as is")
        return state


def _adapt_first_conv(state: dict[str, torch.Tensor], cfg: Mapping[str, Any], in_chans: int, notes: list[str]) -> None:
    """Sum or repeat the stem's RGB filters for another input channel count (timm's `adapt_input_conv`)."""
    from timm.models import adapt_input_conv

    first = cfg.get("first_conv") or ()
    base = (cfg.get("input_size") or (3,))[0]
    for name in (first,) if isinstance(first, str) else first:
        weight = state.get(name + ".weight")
        if weight is None or weight.ndim != 4 or in_chans == base or weight.shape[1] != base:
            continue
        try:
            state[name + ".weight"] = adapt_input_conv(in_chans, weight, base_chans=base)
            notes.append(f"adapted {name} from {base} to {in_chans} input channels")
        except NotImplementedError:
            del state[name + ".weight"]
            notes.append(f"{name} left initialised (cannot adapt {base} to {in_chans} channels)")


def _feature_key(key: str, own: set[str]) -> str:
    """A classifier key as named inside timm's feature wrappers (FeatureListNet: `stages.0` -> `stages_0`;
    FeatureGetterNet: the network under `model.`)."""
    if key in own:
        return key
    for candidate in ("model." + key, key.replace(".", "_", 1)):
        if candidate in own:
            return candidate
    return key


# -- torchvision -------------------------------------------------------------------------------------------


def load_torchvision(
    model: nn.Module,
    weights: Any,
    what: str,
    heads: Iterable[str] = (),
    rename: Callable[[str], str] | None = None,
    owner: nn.Module | None = None,
) -> LoadReport | None:
    """A torchvision weights enum (e.g. ResNet18_Weights.IMAGENET1K_V1) through torch.hub's cache into `model`;
    the report is kept on `owner` (default `model`), the part of it that the caller keeps."""
    if not loading_enabled():
        return None
    how = f"`python -c \"from torchvision.models import get_weight; get_weight('{weights}').get_state_dict()\"`"
    state, source = torch_hub_state_dict(weights.url, f"{what} ({weights})", how)
    report = load_matching(model, state, what, f"torchvision {weights}, {source}", heads, rename)
    return announce(owner if owner is not None else model, report)
