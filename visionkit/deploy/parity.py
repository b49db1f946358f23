"""The parity check: an exported model's outputs against the PyTorch model's on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visionkit.engine.export_spec import CheckRow, ExportSpec


class ExportCheckError(Exception):
    """The exported model disagrees with PyTorch beyond tolerance (the CLI prints the table, exit status 1)."""

    def __init__(self, message: str, rows: list[CheckRow]) -> None:
        super().__init__(message)
        self.rows = rows


def dense_compare(
    reference: Sequence[torch.Tensor], exported: Sequence[torch.Tensor], names: Sequence[str], atol: float = 1e-4
) -> list[CheckRow]:
    """One row per output: equal shapes and max |difference| <= atol (integer outputs must be equal)."""
    rows = []
    for name, ref, got in zip(names, reference, exported, strict=True):
        exact = not (ref.is_floating_point() or ref.is_complex())
        tolerance = 0.0 if exact else atol
        if tuple(ref.shape) != tuple(got.shape):
            rows.append(
                CheckRow(name, float("inf"), tolerance, False, f"shape {tuple(got.shape)} != {tuple(ref.shape)}")
            )
            continue
        if ref.numel() == 0:
            rows.append(CheckRow(name, 0.0, tolerance, True, "empty"))
            continue
        diff = (ref.double() - got.double()).abs()
        diff = torch.where(torch.isnan(ref) & torch.isnan(got), torch.zeros_like(diff), diff) if not exact else diff
        diff = torch.nan_to_num(diff, nan=float("inf"))
        worst = float(diff.max())
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        detail = f"at {list(where)}: {float(ref[where]):.6g} vs {float(got[where]):.6g}"
        rows.append(CheckRow(name, worst, tolerance, worst <= tolerance, detail))
    return rows


def worst_rows(rows: Sequence[CheckRow]) -> list[CheckRow]:
    """Per output, the row with the largest difference (a failing row before any passing one)."""
    best: dict[str, CheckRow] = {}
    for row in rows:
        old = best.get(row.output)
        if (
            old is None
            or (old.passed and not row.passed)
            or (old.passed == row.passed and row.max_abs_diff > old.max_abs_diff)
        ):
            best[row.output] = row
    return list(best.values())


def format_table(rows: Sequence[CheckRow]) -> str:
    """The per-output table printed after an export check."""
    width = max([6, *(len(r.output) for r in rows)])
    lines = [f"{'output':<{width}}  {'max |diff|':>12}  {'tolerance':>10}  result  worst"]
    for r in rows:
        lines.append(
            f"{r.output:<{width}}  {r.max_abs_diff:>12.3g}  {r.tolerance:>10.3g}  {'ok' if r.passed else 'FAIL':<6}  "
            f"{r.detail}"
        )
    return "\n".join(lines)


def check_parity(spec: ExportSpec, session: Any, batches: Sequence[tuple[torch.Tensor, ...]]) -> list[CheckRow]:
    """Run PyTorch and the exported session on every input tuple; the worst row per output."""
    names = [o.name for o in spec.outputs]
    rows: list[CheckRow] = []
    for inputs in batches:
        with torch.no_grad():
            reference = spec.module(*inputs)
        reference = list(reference) if isinstance(reference, (tuple, list)) else [reference]
        exported = session.run(*inputs)
        if len(exported) != len(reference):
            rows.append(
                CheckRow("(outputs)", float("inf"), 0.0, False, f"{len(exported)} outputs, expected {len(reference)}")
            )
            continue
        if spec.compare is not None:
            rows += spec.compare(reference, exported, names)
        else:
            rows += dense_compare(reference, exported, names, spec.atol)
    return worst_rows(rows)
