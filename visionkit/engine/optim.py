"""Optimizers and per-update learning-rate schedules (with warmup) from `torch.optim`."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler

from visionkit.errors import ConfigError, did_you_mean
from visionkit.registry import check_kwargs

SCHEDULERS = ("constant", "cosine", "step", "multistep", "exponential", "onecycle", "linear")


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """Resolve an optimizer name (sgd, adam, adamw, rmsprop, ... any torch.optim class, any case)."""
    classes = {
        n.lower(): getattr(torch.optim, n)
        for n in dir(torch.optim)
        if inspect.isclass(getattr(torch.optim, n))
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    }
    cls = classes.get(str(name).lower())
    if cls is None:
        raise ConfigError(
            f"Unknown optimizer '{name}' in 'optimizer.name'.{did_you_mean(str(name).lower(), classes)} "
            f"Accepted: {', '.join(sorted(classes))}."
        )
    return cls


def build_optimizer(
    spec: Mapping[str, Any],
    params: Iterable[torch.nn.Parameter],
    names: Mapping[torch.nn.Parameter, str] | None = None,
) -> torch.optim.Optimizer:
    """Build a torch optimizer from `{name, lr, **kwargs}` (`names`: each parameter's name in the model)."""
    cls = optimizer_class(spec["name"])
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    kwargs = check_kwargs(cls, {"params": [], **kwargs}, f"optimizer '{spec['name']}'", user_keys=set(kwargs))
    kwargs.pop("params")
    return cls(list(params), **kwargs)


def _main_scheduler(name: str, optimizer: torch.optim.Optimizer, steps: int, kwargs: dict[str, Any]) -> Any:
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, **{"T_max": max(steps, 1), **kwargs})
    if name == "step":
        return lr_scheduler.StepLR(optimizer, **{"step_size": max(steps // 3, 1), **kwargs})
    if name == "multistep":
        return lr_scheduler.MultiStepLR(optimizer, **{"milestones": [int(steps * 0.6), int(steps * 0.85)], **kwargs})
    if name == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, **{"gamma": 0.999, **kwargs})
    if name == "linear":
        return lr_scheduler.LinearLR(
            optimizer, **{"start_factor": 1.0, "end_factor": 0.0, "total_iters": max(steps, 1), **kwargs}
        )
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return lr_scheduler.OneCycleLR(optimizer, **{"max_lr": max_lr, "total_steps": max(steps, 1) + 1, **kwargs})
    return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def build_scheduler(spec: Mapping[str, Any], optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Build the per-update LR schedule `{name, warmup_steps, **kwargs}` over `total_steps` updates."""
    validate_scheduler(spec)
    name = spec.get("name") or "constant"
    warmup = int(spec.get("warmup_steps") or 0)
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "warmup_steps", "warmup_factor")}
    main = _main_scheduler(name, optimizer, total_steps - warmup, kwargs)
    if warmup <= 0 or name == "onecycle":
        return main
    start = float(spec.get("warmup_factor", 0.001))
    warm = lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


_SCHEDULER_CLASSES = {
    "cosine": lr_scheduler.CosineAnnealingLR,
    "step": lr_scheduler.StepLR,
    "multistep": lr_scheduler.MultiStepLR,
    "exponential": lr_scheduler.ExponentialLR,
    "linear": lr_scheduler.LinearLR,
    "onecycle": lr_scheduler.OneCycleLR,
}


def validate_scheduler(spec: Mapping[str, Any]) -> None:
    """Check a scheduler spec's name and options without building it."""
    name = spec.get("name") or "constant"
    if name not in SCHEDULERS:
        raise ConfigError(
            f"Unknown scheduler '{name}' in 'scheduler.name'.{did_you_mean(name, SCHEDULERS)} "
            f"Accepted: {', '.join(SCHEDULERS)}."
        )
    user = {k: v for k, v in spec.items() if k not in ("name", "warmup_steps", "warmup_factor")}
    if name == "constant":
        if user:
            raise ConfigError(f"scheduler 'constant' takes no options, got {', '.join(user)}.")
        return
    cls = _SCHEDULER_CLASSES[name]
    filled = {p: 0 for p in inspect.signature(cls).parameters if p not in user}  # stand-ins for built-ins
    check_kwargs(cls, {**filled, **user}, f"scheduler '{name}'", user_keys=set(user))


def validate_optimizer(spec: Mapping[str, Any]) -> None:
    """Check an optimizer spec's name and options without building it."""
    cls = optimizer_class(spec.get("name"))
    user = {k: v for k, v in spec.items() if k != "name"}
    check_kwargs(cls, {"params": [], **user}, f"optimizer '{spec['name']}'", user_keys=set(user))


def fast_forward_scheduler(spec: dict[str, Any], optimizer: torch.optim.Optimizer, horizon: int, steps: int) -> Any:
    """The schedule rebuilt over a new horizon and advanced `steps` updates (a resumed run with more epochs)."""
    import warnings

    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    scheduler = build_scheduler(spec, optimizer, horizon)
    with warnings.catch_warnings():  # stepping a schedule without its optimizer is the point here
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(steps):
            scheduler.step()
    return scheduler
