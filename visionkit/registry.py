"""Registries that map names to builders: one `Registry` class, one instance per component kind."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from visionkit.errors import ConfigError, did_you_mean


@dataclass
class Entry:
    """One registered component: the object, the tasks it serves and where it came from."""

    name: str
    obj: Callable[..., Any]
    tasks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    module: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """'built-in' for visionkit's own components, else the plugin distribution or module."""
        top = self.module.split(".")[0]
        if top == "visionkit":
            return "built-in"
        return _distribution_of(top) or self.module


def _distribution_of(top_module: str) -> str | None:
    from importlib.metadata import packages_distributions

    dists = packages_distributions().get(top_module)
    return f"plugin {dists[0]}" if dists else None


class Registry:
    """A named table of builders with aliases, task filters, origins and checked keyword arguments.

    One name may be registered once per task (e.g. a `cross_entropy` loss for classification and
    another for segmentation); lookups then pass `task=` to choose. Entries without a task serve all.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, list[Entry]] = {}
        self._aliases: dict[str, str] = {}
        self._namespaces: dict[str, Entry] = {}

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        obj: Callable[..., Any] | None = None,
        *,
        task: str | Iterable[str] | None = None,
        aliases: Iterable[str] = (),
        override: bool = False,
        **extra: Any,
    ) -> Any:
        """Register `obj` under `name`; without `obj`, return a decorator."""

        def add(target: Callable[..., Any]) -> Callable[..., Any]:
            key = name or getattr(target, "__name__", None)
            if not key:
                raise ValueError(f"{self.kind}: a name is needed to register {target!r}")
            tasks = (task,) if isinstance(task, str) else tuple(task or ())
            entry = Entry(key, target, tasks, tuple(aliases), getattr(target, "__module__", ""), extra)
            clashes = [e for label in (key, *entry.aliases) for e in self._lookup(label) if _overlap(e, entry)]
            clashes = [e for e in clashes if e.obj is not entry.obj]
            if clashes and not override:
                other = clashes[0]
                raise ConfigError(
                    f"{self.kind} name '{key}' is already registered by {other.module} ({other.origin}) for "
                    f"task(s) {', '.join(other.tasks) or 'all'}; {entry.module} tried to register it again. "
                    "Pick another name, or pass override=True to replace it on purpose."
                )
            for old in clashes + [e for e in self._entries.get(key, []) if e.obj is entry.obj]:
                self._remove(old)
            self._entries.setdefault(key, []).append(entry)
            for alias in entry.aliases:
                self._aliases[alias] = key
            return target

        return add(obj) if obj is not None else add

    def register_namespace(self, prefix: str, builder: Callable[..., Any], *, task: str | None = None) -> None:
        """Route every name `prefix/x` to `builder(x, **kwargs)` (e.g. `timm/resnet18`)."""
        self._namespaces[prefix] = Entry(prefix + "/*", builder, (task,) if task else (), (), builder.__module__)

    def _lookup(self, label: str) -> list[Entry]:
        return list(self._entries.get(self._aliases.get(label, label), []))

    def _remove(self, entry: Entry) -> None:
        group = self._entries.get(entry.name, [])
        if entry in group:
            group.remove(entry)
        if not group:
            self._entries.pop(entry.name, None)
            for alias in entry.aliases:
                self._aliases.pop(alias, None)

    # -- lookup -------------------------------------------------------------------------------
    def entry(self, name: str, task: str | Sequence[str] | None = None) -> Entry:
        """Return the `Entry` for a name or alias (for `task`), or raise a ConfigError with close matches.

        `task` may be a sequence (a task and the tasks it derives from): the first that has `name` wins.
        """
        from visionkit.plugins import load_plugins

        load_plugins()
        if task is not None and not isinstance(task, str):
            scopes = [self._task_name(t) for t in task]
            for scope in scopes:
                if any(not e.tasks or scope in e.tasks for e in self._lookup(name)):
                    return self.entry(name, scope)
            task = scopes[0] if scopes else None
        task = self._task_name(task)
        found = self._lookup(name)
        if found:
            fitting = [e for e in found if task is None or not e.tasks or task in e.tasks]
            if len(fitting) == 1:
                return fitting[0]
            if len(fitting) > 1:
                specific = [e for e in fitting if e.tasks]
                if task is not None and len(specific) == 1:
                    return specific[0]
                raise ConfigError(
                    f"{self.kind} '{name}' exists for several tasks ({'; '.join(','.join(e.tasks) for e in found)}); "
                    "say which task it is for."
                )
        spaces = {p: ns for p, ns in self._namespaces.items() if task is None or not ns.tasks or task in ns.tasks}
        prefix, _, rest = str(name).partition("/")
        if rest and prefix in spaces:
            ns = spaces[prefix]
            return Entry(name, _bind_first(ns.obj, rest), ns.tasks, (), ns.module)
        known = self.names(task) + [a for a, k in self._aliases.items() if k in self.names(task)]
        where = f" for task '{task}'" if task else ""
        raise ConfigError(
            f"Unknown {self.kind} '{name}'{where}.{did_you_mean(name, known)} "
            f"Known: {', '.join(sorted(self.names(task))) or '(none)'}"
            + (f"; or a prefix {', '.join(p + '/' for p in spaces)}" if spaces else "")
            + ". Run `python tools/list.py` to see every component and where it comes from."
        )

    def _task_name(self, task: str | None) -> str | None:
        if task is None:
            return None
        if self is TASKS:
            return task
        try:
            return TASKS.canonical(task)
        except ConfigError:
            return task

    def get(self, name: str, task: str | Sequence[str] | None = None) -> Callable[..., Any]:
        """Return the registered object for a name or alias (choosing by task when names are shared)."""
        return self.entry(name, task).obj

    def canonical(self, name: str) -> str:
        """Return the canonical name for a name or alias."""
        return self.entry(name).name

    def __contains__(self, name: object) -> bool:
        from visionkit.plugins import load_plugins

        load_plugins()
        return isinstance(name, str) and bool(self._lookup(name))

    def names(self, task: str | None = None) -> list[str]:
        """Sorted canonical names, optionally only those serving `task` (or every task)."""
        from visionkit.plugins import load_plugins

        load_plugins()
        task = self._task_name(task)
        return sorted(
            n
            for n, group in self._entries.items()
            if any(task is None or not e.tasks or task in e.tasks for e in group)
        )

    def entries(self) -> list[Entry]:
        """Every entry, sorted by name (namespaces last)."""
        self.names()
        return [e for n in sorted(self._entries) for e in self._entries[n]] + list(self._namespaces.values())

    # -- building -----------------------------------------------------------------------------
    def build(
        self, spec: str | Mapping[str, Any], key: str = "", task: str | Sequence[str] | None = None, **defaults: Any
    ) -> Any:
        """Build from a name or a mapping `{name: ..., **kwargs}`; kwargs are checked first."""
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, Mapping) and "name" in spec:
            name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        else:
            where = f"'{key}'" if key else f"the {self.kind} spec"
            raise ConfigError(f"{where} must be a name or a mapping with a 'name' key, got {spec!r}.")
        obj = self.get(name, task)
        merged = {**defaults, **kwargs}
        merged = check_kwargs(obj, merged, f"{key or self.kind} '{name}'", user_keys=set(kwargs))
        return obj(**merged)


def _overlap(a: Entry, b: Entry) -> bool:
    """Two entries clash when they could serve the same task."""
    return not a.tasks or not b.tasks or bool(set(a.tasks) & set(b.tasks))


def _bind_first(fn: Callable[..., Any], first: str) -> Callable[..., Any]:
    def bound(**kwargs: Any) -> Any:
        return fn(first, **kwargs)

    bound.__module__ = fn.__module__
    bound.__signature__ = _drop_first_param(fn)  # type: ignore[attr-defined]
    return bound


def _drop_first_param(fn: Callable[..., Any]) -> inspect.Signature:
    sig = inspect.signature(fn)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def check_kwargs(
    obj: Callable[..., Any], kwargs: Mapping[str, Any], what: str, user_keys: set[str] | None = None
) -> dict[str, Any]:
    """Return the kwargs `obj` accepts; raise a ConfigError with hints for a user key it does not take.

    Keys outside `user_keys` are defaults offered by the caller: dropped quietly when the builder does
    not take them (e.g. `num_classes` offered to every model builder of a task) or when they are None
    (so the builder's own default applies).
    """
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return dict(kwargs)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    offered = user_keys is not None
    kwargs = {k: v for k, v in kwargs.items() if not (offered and k not in user_keys and v is None)}
    for k in kwargs:
        if k not in accepted:
            if offered and k not in user_keys:
                continue  # a default the caller offers that this builder does not take
            raise ConfigError(
                f"{what} has no option '{k}'.{did_you_mean(k, accepted)} "
                f"Accepted options: {', '.join(accepted) or '(none)'}."
            )
    missing = [n for n in accepted if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"{what} needs option(s) {', '.join(missing)}; add them to the config.")
    return {k: v for k, v in kwargs.items() if k in accepted}


TASKS = Registry("task")
MODELS = Registry("model")
DATASETS = Registry("dataset")
LOSSES = Registry("loss")
METRICS = Registry("metric")
TRANSFORMS = Registry("transform")
CALLBACKS = Registry("callback")

ALL = {
    "tasks": TASKS,
    "models": MODELS,
    "datasets": DATASETS,
    "losses": LOSSES,
    "metrics": METRICS,
    "transforms": TRANSFORMS,
    "callbacks": CALLBACKS,
}
