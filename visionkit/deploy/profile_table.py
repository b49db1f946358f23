"""The profile as a person reads it: the machine's CPU name and the printed table of `tools/profile.py`."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, else what the platform module tells."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _si(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def format_table(record: dict[str, Any]) -> str:
    """The profile as readable text: a header of facts and one line per runtime and batch size."""
    params = record["params"]
    memory = f"{record['peak_memory_mb']:.1f} MiB" if record["peak_memory_mb"] is not None else "n/a (CPU)"
    inputs = ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in record["inputs"])
    lines = [
        f"{record['model']} ({record['task']}) on {record['device']}"
        + (f" ({record['gpu']})" if record.get("gpu") else "")
        + f", {record['cpu']}, {record['threads']} threads, load average {record['load_average']}",
        f"torch {record['torch']}, onnxruntime {record['onnxruntime'] or '-'}",
        f"params {params['total']:,} (trainable {params['trainable']:,})   FLOPs/image {_si(record['flops'])}"
        f"   peak memory {memory}",
        f"one call: {inputs} ({record['signature']})",
        "",
        f"{'runtime':<12} {'batch':>5} {'calls':>5} {'p50 ms':>9} {'p95 ms':>9} {'images/s':>10}",
    ]
    for row in record["rows"]:
        if row["error"]:
            lines.append(f"{row['runtime']:<12} {row['batch']:>5} {row['calls']:>5}   {row['error'][:100]}")
            continue
        lines.append(
            f"{row['runtime']:<12} {row['batch']:>5} {row['calls']:>5} {row['p50_ms']:>9.3f} "
            f"{row['p95_ms']:>9.3f} {row['images_per_s']:>10.1f}"
            + (f"  (first call {row['first_call_s']:.1f} s)" if "first_call_s" in row else "")
        )
    lines += [f"note: {n}" for n in record["notes"]]
    return "\n".join(lines)
