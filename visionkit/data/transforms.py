"""Augmentation pipelines written in YAML and built with albumentations."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A

from visionkit.errors import ConfigError, did_you_mean
from visionkit.registry import TRANSFORMS
from visionkit.signatures import check_kwargs


def _albumentations_names() -> list[str]:
    return [n for n in dir(A) if n[:1].isupper() and inspect.isclass(getattr(A, n))]


def build_transform(spec: Mapping[str, Any], key: str = "transforms") -> A.BasicTransform:
    """Build one albumentations transform from `{name: HorizontalFlip, p: 0.5, ...}`."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"Each entry of '{key}' must be a mapping with a 'name' key, got {spec!r}.")
    name = spec["name"]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if name in ("Compose", "OneOf", "SomeOf", "Sequential"):
        children = kwargs.pop("transforms", [])
        return getattr(A, name)([build_transform(c, key) for c in children], **kwargs)
    if name in TRANSFORMS:
        builder = TRANSFORMS.get(name)
    elif hasattr(A, name) and inspect.isclass(getattr(A, name)):
        builder = getattr(A, name)
    else:
        options = _albumentations_names() + TRANSFORMS.names()
        raise ConfigError(
            f"Unknown transform '{name}' in '{key}'.{did_you_mean(name, options)} "
            "Use an albumentations class name (e.g. HorizontalFlip, RandomResizedCrop) or a registered TRANSFORMS name."
        )
    kwargs = check_kwargs(builder, kwargs, f"transform '{name}' in '{key}'", user_keys=set(kwargs))
    try:
        return builder(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Transform '{name}' in '{key}' rejected its options {kwargs}: {exc}") from exc


def build_pipeline(specs: Sequence[Any] | None, key: str = "transforms", **compose_kwargs: Any) -> A.Compose:
    """Build an `A.Compose` from a list of transform specs (bbox/keypoint params via compose_kwargs)."""
    if specs is None:
        specs = []
    if not isinstance(specs, Sequence) or isinstance(specs, (str, bytes)):
        raise ConfigError(f"'{key}' must be a list of transforms, got {specs!r}.")
    return A.Compose([build_transform(s, key) for s in specs], **compose_kwargs)
