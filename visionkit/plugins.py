"""Plugin discovery: built-in tasks, the `visionkit.plugins` entry-point group and explicit modules."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points

from visionkit.errors import PluginError

GROUP = "visionkit.plugins"
# The built-in tasks register through the same public registry API a third-party plugin uses.
BUILTIN_TASKS = (
    "visionkit.tasks.classification",
    "visionkit.tasks.segmentation",
    "visionkit.tasks.detection",
    "visionkit.tasks.generation",
)

_state = {"loaded": False, "loading": False}
_imported: list[str] = []


def loading() -> bool:
    """True while `load_plugins` is importing the built-in tasks and entry-point plugins."""
    return _state["loading"]


@contextmanager
def _all_or_nothing(module_name: str) -> Iterator[None]:
    """Import a plugin as a whole: if it raises, remove what it registered and forget the module.

    The plugin module itself leaves `sys.modules` when this import added it (so a retry runs its
    registrations again); modules it imported on the way stay, as Python leaves them.
    """
    from visionkit.registry import rollback_on_error

    fresh = module_name not in sys.modules
    imported = len(_imported)
    try:
        with rollback_on_error():
            yield
    except BaseException:
        del _imported[imported:]  # plugins imported by the failing one lost their registrations too
        if fresh:
            sys.modules.pop(module_name, None)
        raise


def load_plugins() -> None:
    """Import the built-in tasks and every installed entry-point plugin, once per process."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        for module in BUILTIN_TASKS:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            _load_entry_point(ep)
        _state["loaded"] = True
    finally:
        _state["loading"] = False


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


def import_plugin(spec: str) -> None:
    """Import a plugin module given as `module` or `module:function` (CLI `--plugin`, config `plugins:`)."""
    load_plugins()
    if spec in _imported:
        return
    module_name, _, func = spec.partition(":")
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
    except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
        raise PluginError(f"Plugin '{spec}' failed to load: {type(exc).__name__}: {exc}") from exc
    _imported.append(spec)
