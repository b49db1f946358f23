"""Optimizers and per-update learning-rate schedules (with warmup) from `torch.optim`."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler

from visionkit.engine.patterns import name_matches, unmatched_pattern_message
from visionkit.errors import ConfigError, did_you_mean
from visionkit.signatures import check_kwargs

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


# Keys of the `optimizer` section that are not options of the torch optimizer class.
EXTRA_KEYS = ("param_groups", "decay_norm_and_bias")
GROUP_KEYS = ("params", "lr_scale")  # keys of a `param_groups` entry besides the optimizer's own options


def build_optimizer(
    spec: Mapping[str, Any],
    params: Iterable[torch.nn.Parameter],
    names: Mapping[torch.nn.Parameter, str] | None = None,
) -> torch.optim.Optimizer:
    """Build a torch optimizer from `{name, lr, **kwargs}` (`names`: each parameter's name in the model).

    Parameters go into groups: `optimizer.param_groups` entries (the first whose pattern matches wins),
    then the rest; inside each, biases and norm weights get no weight decay unless `decay_norm_and_bias`.
    """
    cls = optimizer_class(spec["name"])
    kwargs = {k: v for k, v in spec.items() if k not in ("name", *EXTRA_KEYS)}
    kwargs = check_kwargs(cls, {"params": [], **kwargs}, f"optimizer '{spec['name']}'", user_keys=set(kwargs))
    kwargs.pop("params")
    return cls(parameter_groups(spec, cls, list(params), names or {}), **kwargs)


def _option_default(cls: type, spec: Mapping[str, Any], key: str) -> Any:
    """The value of optimizer option `key`: the spec's, else the class default (None when it has none)."""
    if key in spec:
        return spec[key]
    param = inspect.signature(cls).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def no_weight_decay(param: torch.nn.Parameter, name: str) -> bool:
    """Biases, norm weights and other vectors/scalars (ndim <= 1) are not decayed by default."""
    return param.ndim <= 1 or name.endswith(".bias")


def parameter_groups(
    spec: Mapping[str, Any], cls: type, params: list[torch.nn.Parameter], names: Mapping[Any, str]
) -> list[dict[str, Any]]:
    """Split `params` into torch param groups by `spec.param_groups` and the no-decay rule (see build_optimizer)."""
    entries = list(spec.get("param_groups") or [])
    if entries and not names:
        raise ConfigError("optimizer.param_groups needs the parameters' names; pass `names` to build_optimizer.")
    buckets: list[list[torch.nn.Parameter]] = [[] for _ in range(len(entries) + 1)]  # the last: unmatched
    for p in params:
        name = names.get(p, "")
        index = next((i for i, e in enumerate(entries) if name_matches(name, e["params"])), len(entries))
        buckets[index].append(p)
    base_decay = _option_default(cls, spec, "weight_decay")
    split = base_decay is not None and not spec.get("decay_norm_and_bias", False)
    groups: list[dict[str, Any]] = []

    def add(members: list[torch.nn.Parameter], options: dict[str, Any], split_decay: bool) -> None:
        if split_decay and options.get("weight_decay", base_decay):
            decayed = [p for p in members if not no_weight_decay(p, names.get(p, ""))]
            undecayed = [p for p in members if no_weight_decay(p, names.get(p, ""))]
            groups.extend(
                {"params": ps, **options, **wd} for ps, wd in ((decayed, {}), (undecayed, {"weight_decay": 0.0})) if ps
            )
        elif members:
            groups.append({"params": members, **options})

    add(buckets[-1], {}, split)  # the default group first: its lr is the one the trainer logs
    all_names = list(dict.fromkeys(names.values()))
    for i, (entry, members) in enumerate(zip(entries, buckets)):
        if not members and not any(name_matches(n, entry["params"]) for n in all_names):
            patterns = [entry["params"]] if isinstance(entry["params"], str) else entry["params"]
            raise ConfigError(
                unmatched_pattern_message(f"optimizer.param_groups[{i}].params", str(patterns), all_names)
            )
        options = {k: v for k, v in entry.items() if k not in GROUP_KEYS}
        if "lr_scale" in entry:
            options["lr"] = float(_option_default(cls, spec, "lr")) * float(entry["lr_scale"])
        add(members, options, split and "weight_decay" not in entry)
    return groups


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
    """Check an optimizer spec's name, options, `param_groups` and `decay_norm_and_bias` without building it."""
    cls = optimizer_class(spec.get("name"))
    user = {k: v for k, v in spec.items() if k not in ("name", *EXTRA_KEYS)}
    check_kwargs(cls, {"params": [], **user}, f"optimizer '{spec['name']}'", user_keys=set(user))
    flag = spec.get("decay_norm_and_bias", False)
    if not isinstance(flag, bool):
        raise ConfigError(f"optimizer.decay_norm_and_bias must be true or false, got {flag!r}.")
    entries = spec.get("param_groups")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise ConfigError(
            f"optimizer.param_groups must be a list of {{params: PATTERN, lr_scale: ..., <option>: ...}} entries, "
            f"got {entries!r}."
        )
    for i, entry in enumerate(entries):
        _validate_group(cls, spec, user, entry, f"optimizer.param_groups[{i}]")


def _validate_group(cls: type, spec: Mapping[str, Any], base: dict[str, Any], entry: Any, key: str) -> None:
    """Check one `param_groups` entry: its patterns, lr_scale and optimizer options (values included)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{key} must be a mapping like {{params: 'backbone.*', lr_scale: 0.1}}, got {entry!r}.")
    patterns = entry.get("params")
    items = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        raise ConfigError(
            f"{key}.params must be a parameter-name pattern or a list of them (e.g. 'backbone.*'), got {patterns!r}."
        )
    accepted = [*GROUP_KEYS, *(n for n in inspect.signature(cls).parameters if n != "params")]
    for name in entry:
        if name not in accepted:
            raise ConfigError(
                f"Unknown key '{key}.{name}' for optimizer '{spec['name']}'.{did_you_mean(name, accepted)} "
                f"Accepted: {', '.join(accepted)}."
            )
    scale = entry.get("lr_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ConfigError(f"{key}.lr_scale must be a number >= 0 (it multiplies optimizer.lr), got {scale!r}.")
    if "lr_scale" in entry and "lr" in entry:
        raise ConfigError(f"{key} sets both lr and lr_scale; keep one (lr_scale multiplies optimizer.lr).")
    options = {k: v for k, v in entry.items() if k not in GROUP_KEYS}
    try:
        cls([torch.zeros(1, requires_grad=True)], **base)
    except (TypeError, ValueError):
        return  # the base options are at fault; building the optimizer reports them
    try:  # torch checks option values in the constructor only, not in added groups
        cls([torch.zeros(1, requires_grad=True)], **{**base, **options})
    except (TypeError, ValueError) as error:
        names = ", ".join(f"{key}.{k}" for k in options)
        raise ConfigError(f"Invalid option value in {names} for optimizer '{spec['name']}': {error}") from None


def fast_forward_scheduler(spec: dict[str, Any], optimizer: torch.optim.Optimizer, horizon: int, steps: int) -> Any:
    """The schedule rebuilt over a new horizon and advanced `steps` updates (a resumed run with more epochs)."""
    import warnings

    for group in optimizer.param_groups:  # each group's own starting lr (onecycle keeps its peak as max_lr)
        group["lr"] = group["max_lr"] if "max_lr" in group else group["initial_lr"]
    scheduler = build_scheduler(spec, optimizer, horizon)
    with warnings.catch_warnings():  # stepping a schedule without its optimizer is the point here
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(steps):
            scheduler.step()
    return scheduler
