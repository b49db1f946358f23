"""Registries that map names to builders: one `Registry` class, one instance per component kind."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from visionkit.errors import ConfigError, did_you_mean, warn
from visionkit.signatures import check_kwargs


@dataclass
class Entry:
    """One registered component: the object, the tasks it serves, where it came from and its metadata."""

    name: str
    obj: Callable[..., Any]
    tasks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    module: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # per-component facts, e.g. {"family": "gan"}

    @property
    def origin(self) -> str:
        """'built-in' for visionkit's own components, else the plugin distribution or module."""
        top = self.module.split(".")[0]
        if top == "visionkit":
            return "built-in"
        return _distribution_of(top) or self.module


@dataclass(frozen=True)
class Snapshot:
    """A copy of one registry's tables (names, aliases, namespaces), for `Registry.restore`."""

    entries: dict[str, list[Entry]]
    aliases: dict[str, list[Entry]]
    namespaces: dict[str, Entry]


# Plugin discovery is a hook the registry calls before its first lookup; `visionkit.plugins` installs it,
# so the registry never imports the plugin machinery (which sits above it).
_discovery: dict[str, Any] = {"hook": None, "running": False, "done": False}


def set_discovery(hook: Callable[[], None] | None) -> None:
    """Install the function that imports the built-in tasks and installed plugins before the first lookup."""
    _discovery.update(hook=hook, done=False)


def discover() -> None:
    """Run the discovery hook once per process (a no-op while it runs, once it has run, or without a hook)."""
    if _discovery["done"] or _discovery["running"] or _discovery["hook"] is None:
        return
    _discovery["running"] = True
    try:
        _discovery["hook"]()
        _discovery["done"] = True
    finally:
        _discovery["running"] = False


def discovering() -> bool:
    """True while the discovery hook runs (components may then name tasks registered later in its order)."""
    return bool(_discovery["running"])


def _distribution_of(top_module: str) -> str | None:
    from importlib.metadata import packages_distributions

    dists = packages_distributions().get(top_module)
    return f"plugin {dists[0]}" if dists else None


class Registry:
    """A named table of builders with aliases, task filters, origins and checked keyword arguments.

    One name or alias may be registered once per task (e.g. a `cross_entropy` loss with alias `ce` for
    classification and another for segmentation); lookups then pass `task=` to choose. Entries without
    a task serve all.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, list[Entry]] = {}
        self._aliases: dict[str, list[Entry]] = {}  # an alias belongs to its entries, so it is task-scoped
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
        metadata: Mapping[str, Any] | None = None,
        **unexpected: Any,
    ) -> Any:
        """Register `obj` under `name`; without `obj`, return a decorator."""
        if unexpected:
            bad = next(iter(unexpected))
            accepted = ["task", "aliases", "override", "metadata"]
            raise ConfigError(
                f"{self.kind} register({name!r}) got an unknown keyword '{bad}'.{did_you_mean(bad, accepted)} "
                f"Accepted keywords: {', '.join(a + '=' for a in accepted)} (put per-component facts in metadata=)."
            )
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigError(f"{self.kind} register({name!r}): metadata= must be a mapping, got {metadata!r}.")

        def add(target: Callable[..., Any]) -> Callable[..., Any]:
            key = name or getattr(target, "__name__", None)
            if not key:
                raise ValueError(f"{self.kind}: a name is needed to register {target!r}")
            tasks = (task,) if isinstance(task, str) else tuple(task or ())
            module = getattr(target, "__module__", "")
            entry = Entry(key, target, tasks, tuple(aliases), module, dict(metadata or {}))
            clashes: list[tuple[str, Entry]] = []
            for label in (key, *entry.aliases):
                seen = [e for _, e in clashes]
                clashes += [(label, e) for e in self._lookup(label) if _overlap(e, entry) and _absent(e, seen)]
            others = [(label, e) for label, e in clashes if e.obj is not entry.obj]
            if others and not override:
                label, other = others[0]
                raise ConfigError(
                    f"{self.kind} {'name' if label == key else 'alias'} '{label}' is already registered by "
                    f"{other.module} ({other.origin}) for task(s) {', '.join(other.tasks) or 'all'}; "
                    f"{entry.module} tried to register it again. "
                    "Pick another name, or pass override=True to replace it on purpose."
                )
            _announce_overrides(self.kind, entry, key, others)
            # The same object registered again for tasks it already serves replaces its entry (a module imported
            # twice); for other tasks it is one more entry, so one builder can serve several tasks.
            again = [e for e in self._entries.get(key, []) if e.obj is entry.obj and _overlap(e, entry)]
            for old in [e for _, e in clashes] + again:
                self._remove(old)
            self._entries.setdefault(key, []).append(entry)
            for alias in entry.aliases:
                self._aliases.setdefault(alias, []).append(entry)
            return target

        return add(obj) if obj is not None else add

    def register_namespace(
        self,
        prefix: str,
        builder: Callable[..., Any],
        *,
        task: str | None = None,
        names: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """Route every name `prefix/x` to `builder(x, **kwargs)` (e.g. `timm/resnet18`); `names()`, when given,
        lists the x it knows, so an unknown name can suggest `prefix/x`."""
        metadata = {"names": names} if names is not None else {}
        entry = Entry(prefix + "/*", builder, (task,) if task else (), (), builder.__module__, metadata)
        self._namespaces[prefix] = entry

    def _lookup(self, label: str) -> list[Entry]:
        """Entries named `label` and entries with the alias `label`, for every task."""
        found = list(self._entries.get(label, []))
        return found + [e for e in self._aliases.get(label, []) if _absent(e, found)]

    def _remove(self, entry: Entry) -> None:
        """Remove one entry with its own aliases (other entries sharing a name or alias stay)."""
        for table, label in ((self._entries, entry.name), *((self._aliases, a) for a in entry.aliases)):
            group = [e for e in table.get(label, []) if e is not entry]
            if group:
                table[label] = group
            else:
                table.pop(label, None)

    def snapshot(self) -> Snapshot:
        """A copy of the tables (what is registered now), for `restore`."""
        return Snapshot(
            {k: list(v) for k, v in self._entries.items()},
            {k: list(v) for k, v in self._aliases.items()},
            dict(self._namespaces),
        )

    def restore(self, saved: Snapshot) -> None:
        """Put back the tables a `snapshot` copied (registrations made since are undone)."""
        self._entries = {k: list(v) for k, v in saved.entries.items()}
        self._aliases = {k: list(v) for k, v in saved.aliases.items()}
        self._namespaces = dict(saved.namespaces)

    # -- lookup -------------------------------------------------------------------------------
    def entry(self, name: str, task: str | Sequence[str] | None = None) -> Entry:
        """Return the `Entry` for a name or alias (for `task`), or raise a ConfigError with close matches.

        `task` may be a sequence (a task and the tasks it derives from): the first that has `name` wins.
        """
        discover()
        if task is not None and not isinstance(task, str):
            scopes = [self._task_name(t) for t in task]
            for scope in scopes:
                if any(_serves(e, scope) for e in self._lookup(name)):
                    return self.entry(name, scope)
            task = scopes[0] if scopes else None
        task = self._task_name(task)
        found = self._lookup(name)
        if found:
            fitting = [e for e in found if _serves(e, task)]
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
        known = self.names(task) + [a for a, group in self._aliases.items() if any(_serves(e, task) for e in group)]
        where = f" for task '{task}'" if task else ""
        exact, close = _namespace_matches(str(name), spaces)
        nearby = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        suggestions = list(dict.fromkeys(exact + nearby + close))[:3]
        hint = (" Did you mean " + " or ".join(repr(c) for c in suggestions) + "?") if suggestions else ""
        raise ConfigError(
            f"Unknown {self.kind} '{name}'{where}.{hint} "
            f"Known: {', '.join(sorted(self.names(task))) or '(none)'}"
            + (f"; or a prefix {', '.join(p + '/' for p in spaces)}" if spaces else "")
            + ". Run `visionkit list` (or python tools/list.py) to see every component and where it comes from."
        )

    def _task_name(self, task: str | None) -> str | None:
        """The canonical task name for a task name or alias; a ConfigError for an unknown task."""
        if task is None or self is TASKS:
            return task
        if not isinstance(task, str):
            raise ConfigError(f"A {self.kind} lookup got task={task!r}; give a task name such as 'classification'.")
        found = TASKS._lookup(task)
        if found:
            return found[0].name
        if discovering():
            return task  # a plugin imported during discovery may name a task registered later in the order
        known = TASKS.names() + list(TASKS._aliases)
        raise ConfigError(
            f"Unknown task '{task}' in a {self.kind} lookup.{did_you_mean(task, known)} "
            f"Known tasks: {', '.join(TASKS.names()) or '(none)'}."
        )

    def get(self, name: str, task: str | Sequence[str] | None = None) -> Callable[..., Any]:
        """Return the registered object for a name or alias (choosing by task when names are shared)."""
        return self.entry(name, task).obj

    def canonical(self, name: str) -> str:
        """Return the canonical name for a name or alias."""
        return self.entry(name).name

    def __contains__(self, name: object) -> bool:
        discover()
        return isinstance(name, str) and bool(self._lookup(name))

    def names(self, task: str | None = None) -> list[str]:
        """Sorted canonical names, optionally only those serving `task` (or every task)."""
        discover()
        task = self._task_name(task)
        return sorted(n for n, group in self._entries.items() if any(_serves(e, task) for e in group))

    def metadata(self, name: str, task: str | Sequence[str] | None = None) -> dict[str, Any]:
        """Return a copy of the metadata registered with a name or alias (an empty dict when none)."""
        return dict(self.entry(name, task).metadata)

    def entries(self, discover_first: bool = True) -> list[Entry]:
        """Every entry, sorted by name, then task and module (namespaces last), whatever order they registered in;
        `discover_first=False` lists what is registered now."""
        if discover_first:
            discover()
        named = [e for n in sorted(self._entries) for e in sorted(self._entries[n], key=lambda e: (e.tasks, e.module))]
        return named + [self._namespaces[p] for p in sorted(self._namespaces)]

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


def _announce_overrides(kind: str, entry: Entry, key: str, replaced: list[tuple[str, Entry]]) -> None:
    """Say on stderr which component of another module an `override=True` registration replaces."""
    done: list[Entry] = []
    for label, old in replaced:
        if old.module == entry.module or not _absent(old, done):
            continue  # a module re-registering its own component (e.g. a reload) replaces nothing of another's
        done.append(old)
        what = "name" if label == key else "alias"
        tasks = ", ".join(old.tasks) or "all tasks"
        warn(
            f"{kind} {what} '{label}' ({tasks}) from {_where(old)} is replaced by {_where(entry)}, which "
            f"registers it with override=True: configs naming '{label}' now build {entry.module}'s "
            f"{getattr(entry.obj, '__name__', 'object')}. Register it under another name to keep both."
        )


def _where(entry: Entry) -> str:
    """'built-in (visionkit.tasks...)', 'plugin dist (module)' or the bare module."""
    origin = entry.origin
    return origin if origin == entry.module else f"{origin} ({entry.module})"


def registered_entries() -> frozenset[tuple[str, int]]:
    """Identity marks of every entry and namespace of every registry (to tell whether an import added any)."""
    return frozenset((kind, id(e)) for kind, registry in ALL.items() for e in registry.entries(discover_first=False))


def _overlap(a: Entry, b: Entry) -> bool:
    """Two entries clash when they could serve the same task."""
    return not a.tasks or not b.tasks or bool(set(a.tasks) & set(b.tasks))


def _serves(entry: Entry, task: str | None) -> bool:
    """True when `entry` is usable for `task` (None: any task); entries without tasks serve every task."""
    return task is None or not entry.tasks or task in entry.tasks


def _absent(entry: Entry, entries: list[Entry]) -> bool:
    """True when this very entry object is not in `entries` (entries compare by identity here)."""
    return all(e is not entry for e in entries)


@contextmanager
def rollback_on_error() -> Iterator[None]:
    """Undo every registration made inside the block when it raises (e.g. a plugin failing half-way)."""
    saved = snapshot_all()
    try:
        yield
    except BaseException:
        restore_all(saved)
        raise


def snapshot_all() -> dict[str, Snapshot]:
    """A snapshot of every registry, by kind (for `restore_all`)."""
    return {kind: registry.snapshot() for kind, registry in ALL.items()}


def restore_all(saved: Mapping[str, Snapshot]) -> None:
    """Put back every registry a `snapshot_all` copied."""
    for kind, registry in ALL.items():
        registry.restore(saved[kind])


def _bind_first(fn: Callable[..., Any], first: str) -> Callable[..., Any]:
    def bound(**kwargs: Any) -> Any:
        return fn(first, **kwargs)

    bound.__module__ = fn.__module__
    bound.__signature__ = _drop_first_param(fn)  # type: ignore[attr-defined]
    return bound


def _drop_first_param(fn: Callable[..., Any]) -> inspect.Signature:
    sig = inspect.signature(fn)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


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


def _namespace_matches(name: str, spaces: dict[str, Entry]) -> tuple[list[str], list[str]]:
    """`prefix/name` for each namespace that lists `name` among its names, and `prefix/x` for close x."""
    exact: list[str] = []
    close: list[str] = []
    for prefix, entry in spaces.items():
        provider = entry.metadata.get("names")
        if provider is None:
            continue
        try:
            known = list(provider())
        except Exception:  # noqa: BLE001 - a hint must never hide the error it decorates
            continue
        if name in known:
            exact.append(f"{prefix}/{name}")
        else:
            close += [f"{prefix}/{c}" for c in difflib.get_close_matches(name, known, n=2, cutoff=0.8)]
    return exact, close
