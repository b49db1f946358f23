"""Plugin discovery: built-in tasks, the `visionkit.plugins` entry-point group and explicit modules."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points, packages_distributions
from typing import Any

from visionkit import registry
from visionkit.errors import PluginError, VisionkitError, warn
from visionkit.registry import ALL, Snapshot, registered_entries, rollback_on_error

GROUP = "visionkit.plugins"
# The built-in tasks (and the loggers a config can name) register through the same public registry API a
# third-party plugin uses.
BUILTIN_TASKS = (
    "visionkit.tasks.classification",
    "visionkit.tasks.segmentation",
    "visionkit.tasks.detection",
    "visionkit.tasks.instance",
    "visionkit.tasks.generation",
    "visionkit.engine.loggers",
)

_imported: list[str] = []
_user: list[str] = []  # specs given to import_plugin (--plugin, `plugins:`, the Python API), in order
_provides: dict[str, set[str]] = {}  # spec -> the component names (and aliases) it registered
_entry_modules: set[str] = set()  # modules of entry-point plugins: they load by themselves, never recorded


def loading() -> bool:
    """True while `load_plugins` is importing the built-in tasks and entry-point plugins."""
    return registry.discovering()


@contextmanager
def _all_or_nothing(module_name: str) -> Iterator[None]:
    """Import a plugin as a whole: if it raises, remove what it registered and forget the module.

    The plugin module itself leaves `sys.modules` when this import added it (so a retry runs its
    registrations again); modules it imported on the way stay, as Python leaves them.
    """
    fresh = module_name not in sys.modules
    imported, user = len(_imported), len(_user)
    try:
        with rollback_on_error():
            yield
    except BaseException:
        del _imported[imported:]  # plugins imported by the failing one lost their registrations too
        del _user[user:]
        if fresh:
            sys.modules.pop(module_name, None)
        raise


def load_plugins() -> None:
    """Import the built-in tasks and every installed entry-point plugin, once per process."""
    registry.discover()


def _discover() -> None:
    """The registry's discovery hook: the built-in tasks, then the entry points in name order."""
    for module in BUILTIN_TASKS:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        _load_entry_point(ep)


registry.set_discovery(_discover)


def _load_entry_point(ep: EntryPoint) -> None:
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    try:
        with _all_or_nothing(ep.module):
            target = ep.load()
            if ":" in ep.value and callable(target):
                target()
    except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
        raise PluginError(
            f"Plugin '{ep.name}' = '{ep.value}' from distribution '{dist}' (entry-point group "
            f"'{GROUP}') failed to load: {type(exc).__name__}: {exc}. Fix or uninstall that package "
            f"(pip uninstall {dist})."
        ) from exc
    _imported.append(ep.value)
    _entry_modules.add(ep.module)


def import_plugin(spec: str) -> None:
    """Import a plugin module given as `module` or `module:function` (CLI `--plugin`, config `plugins:`)."""
    load_plugins()
    if spec in _imported:
        return
    module_name, _, func = spec.partition(":")
    seen_before = module_name in sys.modules
    before = registered_entries()
    try:
        with _all_or_nothing(module_name):
            module = importlib.import_module(module_name)
            if func:
                getattr(module, func)()
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PluginError(
                f"Plugin module '{module_name}' was not found. Pass an importable module name "
                "(installed, or on PYTHONPATH / the current directory), e.g. --plugin my_pkg.plugin."
            ) from exc
        raise PluginError(f"Plugin '{spec}' failed to import: {type(exc).__name__}: {exc}") from exc
    except VisionkitError as exc:  # e.g. a name a built-in already has: the registry's message says which
        raise PluginError(f"Plugin '{spec}' failed to load: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
        raise PluginError(f"Plugin '{spec}' failed to load: {type(exc).__name__}: {exc}") from exc
    _imported.append(spec)
    if not loading() and module_name not in BUILTIN_TASKS and module_name not in _entry_modules:
        _user.append(spec)
        _provides[spec] = _names(lambda kind, e: (kind, id(e)) not in before or _from_module(e.module, module_name))
    if registered_entries() == before:
        _warn_registered_nothing(spec, module, seen_before)


def _warn_registered_nothing(spec: str, module: object, seen_before: bool) -> None:
    """Say on stderr that importing `spec` added nothing to any registry, with the likely reasons."""
    name, _, func = spec.partition(":")
    if not func and any(_from_module(e.module, name) for r in ALL.values() for e in r.entries()):
        return  # imported earlier (e.g. `import my_plugin` before a config named it): its components are there
    earlier = ""
    if func:
        why = f"its function {func}() registered no component"
    else:
        functions = [n for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == name]
        listed = f" (it defines {', '.join(functions[:5])})" if functions else ""
        why = f"if it registers its components in a function, name it: --plugin {name}:FUNCTION{listed}"
        if seen_before:
            earlier = " It had been imported before, so registrations made at its import ran then."
    warn(
        f"plugin '{spec}' registered nothing: importing it added no component to any visionkit registry "
        f"({', '.join(r.kind for r in ALL.values())}); {why}, or check that it calls e.g. "
        f"MODELS.register(...) from visionkit.registry.{earlier}"
    )


def describe(spec: str) -> dict[str, Any]:
    """What a checkpoint records of a plugin, as information only: its spec, module and installing distribution."""
    module = spec.partition(":")[0]
    dists = packages_distributions().get(module.split(".")[0])
    return {"spec": spec, "module": module, "distribution": dists[0] if dists else None}


def is_loaded(spec: str) -> bool:
    """True when a plugin was imported in this process (by import_plugin, an entry point or the user's own code)."""
    return spec in _imported or spec.partition(":")[0] in sys.modules


def require_loaded(specs: Iterable[str], source: str, recorded: Iterable[Mapping[str, Any]] = ()) -> None:
    """Check that the plugins a downloaded file names are loaded; never import them (a PluginError naming the flag)."""
    missing = [spec for spec in specs if not is_loaded(spec)]
    if not missing:
        return
    spec = missing[0]
    known = {r.get("spec"): r for r in recorded if isinstance(r, Mapping)}
    dist = known.get(spec, {}).get("distribution") or describe(spec)["distribution"]
    from_dist = f" (from the distribution '{dist}')" if dist else ""
    others = f"; it also names {', '.join(repr(m) for m in missing[1:])}" if len(missing) > 1 else ""
    install = f", or install '{dist}' so that its entry point loads it" if dist else ""
    raise PluginError(
        f"{source} was trained with the plugin '{spec}'{from_dist}, which this process has not loaded{others}. "
        f"visionkit never imports or calls code that a checkpoint or exported model names: pass --plugin {spec} "
        f"(from Python: visionkit.plugins.import_plugin('{spec}') first){install}."
    )


def _from_module(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def user_plugins() -> list[str]:
    """Plugin specs imported through `import_plugin` in this process, in order (not built-ins or entry points)."""
    return list(_user)


def record_plugins(listed: Iterable[str] | None, cfg: Any = None) -> list[str]:
    """A config's `plugins:` list joined with the imported plugins whose components `cfg` names: order kept, once.

    A run saves this list, so its checkpoint loads the plugins that built it without --plugin. A plugin the
    process imported for something else (another run, a test) is left out: it is not this run's to need.
    """
    used = None
    if cfg is not None:
        used = {s for text in _strings(cfg) for s in (text, text.partition("/")[0] + "/")}
    merged: list[str] = list(dict.fromkeys(listed or []))
    for spec in _user:
        if spec not in merged and (used is None or _provides.get(spec, set()) & used):
            merged.append(spec)
    return merged


def _names(keep: Callable[[str, Any], bool]) -> set[str]:
    """Names and aliases of the registry entries `keep(kind, entry)` accepts (`prefix/` for a namespace)."""
    names: set[str] = set()
    for kind, table in ALL.items():
        for entry in table.entries(discover_first=False):
            if keep(kind, entry):  # a namespace entry is named `prefix/*`: configs name it as `prefix/x`
                names.update([entry.name[:-1]] if entry.name.endswith("/*") else [entry.name, *entry.aliases])
    return names


@dataclass(frozen=True)
class PluginState:
    """What the registries hold and which plugins were imported, for `restore` (tests, trial runs)."""

    registries: dict[str, Snapshot]
    imported: tuple[str, ...]
    user: tuple[str, ...]


def snapshot() -> PluginState:
    """The registries and the imported-plugin lists as they are now (the built-ins and entry points loaded first)."""
    load_plugins()
    return PluginState(registry.snapshot_all(), tuple(_imported), tuple(_user))


def restore(state: PluginState) -> None:
    """Undo every registration and plugin import made since `snapshot` (modules stay in sys.modules)."""
    registry.restore_all(state.registries)
    _imported[:], _user[:] = state.imported, state.user


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a nested config (names of tasks, models, datasets, losses, metrics, callbacks)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)
