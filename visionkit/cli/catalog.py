"""The built-in components as a file, so `visionkit list` answers without importing torch.

`catalog.json` beside this module lists every built-in registry entry (kind, name, tasks, aliases, module). A
test compares it with the live registries, so it cannot go stale unnoticed; regenerate it with
`python -m visionkit.cli.catalog`. The fast path serves only built-ins: with `--plugin`, or with an installed
entry-point plugin, `visionkit list` imports everything as before.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NamedTuple

CATALOG = Path(__file__).with_name("catalog.json")
GROUP = "visionkit.plugins"


class Row(NamedTuple):
    """One listed component, as `visionkit list` prints it."""

    name: str
    tasks: tuple[str, ...]
    aliases: tuple[str, ...]
    origin: str


def live_catalog() -> dict[str, list[dict[str, Any]]]:
    """The built-in entries of every registry (imports every built-in task)."""
    from visionkit.registry import ALL

    return {
        kind: [
            {"name": e.name, "tasks": list(e.tasks), "aliases": list(e.aliases), "module": e.module}
            for e in registry.entries()
            if e.module.split(".")[0] == "visionkit"
        ]
        for kind, registry in ALL.items()
    }


def stored_catalog() -> dict[str, list[Row]] | None:
    """The catalog file's rows by kind, or None when it is missing or unreadable (the slow path then)."""
    try:
        data = json.loads(CATALOG.read_text())
    except (OSError, ValueError):
        return None
    return {k: [Row(r["name"], tuple(r["tasks"]), tuple(r["aliases"]), "built-in") for r in v] for k, v in data.items()}


def fast_catalog(plugins: list[str]) -> dict[str, list[Row]] | None:
    """The stored catalog when it can answer alone: no --plugin, no installed entry-point plugin."""
    if plugins or list(entry_points(group=GROUP)):
        return None
    return stored_catalog()


def canonical_task(task: str, catalog: dict[str, list[Row]]) -> str | None:
    """A task name or alias as the catalog's task name; None when the catalog does not know it."""
    for row in catalog.get("tasks", []):
        if task == row.name or task in row.aliases:
            return row.name
    return None


if __name__ == "__main__":
    CATALOG.write_text(json.dumps(live_catalog(), indent=1) + "\n")
    print(f"wrote {CATALOG}")
