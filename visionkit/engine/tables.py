"""One reporter for every task: per-class tables found in a run's metrics, printed aligned.

A table is any metrics entry shaped `{"columns": [...], "rows": [[...], ...]}` (detection and instance give
`per_class_table`, `per_class_mask_table`), or a list of per-class dicts with the same keys (segmentation's
`per_class_iou`), or a `{class: value}` mapping (classification's `per_class_accuracy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def as_table(value: Any) -> dict[str, Any] | None:
    """The value as {columns, rows} when it is one of the table shapes above, else None."""
    if isinstance(value, Mapping) and isinstance(value.get("columns"), list) and isinstance(value.get("rows"), list):
        return {"columns": list(value["columns"]), "rows": [list(r) for r in value["rows"]]}
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        columns = list(value[0])
        if all(list(v) == columns for v in value):
            return {"columns": columns, "rows": [[v[c] for c in columns] for v in value]}
    if isinstance(value, Mapping) and value and all(v is None or isinstance(v, (int, float)) for v in value.values()):
        return {"columns": ["class", "value"], "rows": [[k, v] for k, v in value.items()]}
    return None


def format_table(table: Mapping[str, Any], title: str = "") -> list[str]:
    """Aligned text lines: floats to 3 decimals, '-' where a value is undefined (None)."""
    cells = [[str(c) for c in table["columns"]]]
    for row in table["rows"]:
        cells.append([("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = [title] if title else []
    for row in cells:
        padded = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(padded))
    return lines


def report_lines(metrics: Mapping[str, Any], tables: Sequence[str] | None = None, scalars: bool = True) -> list[str]:
    """The scalar metrics, one per line (unless not `scalars`), then every per-class table (or the named ones)
    with its key as title."""
    lines = [f"  {k:<28} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and not k.startswith("_")]
    lines = lines if scalars else []
    for key, value in metrics.items():
        if key.startswith("_") or (tables is not None and key not in tables) or not key.startswith("per_class"):
            continue
        table = as_table(value)
        if table is not None:
            lines += format_table(table, f"{key}:")
    return lines
