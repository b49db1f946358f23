"""What a sweep leaves: the results table (printed, results.csv, results.json), best_config.yaml and history.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from visionkit.config import dump_config
from visionkit.data import absolute_data_paths
from visionkit.tune.space import trial_config


def trial_rows(study: Any, space: dict[str, Any]) -> list[dict[str, Any]]:
    """A row per trial: number, state, searched values, value (pruned: the last report), epochs trained, seconds."""
    rows = []
    for t in study.trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                **{key: t.params.get(key) for key in space},
                "value": t.value,
                "epochs": t.user_attrs.get("epochs", len(t.intermediate_values) or None),
                "seconds": round(duration, 1) if duration is not None else None,
                "run_dir": t.user_attrs.get("run_dir"),
                "note": t.user_attrs.get("error") or _retry_note(t.user_attrs),
            }
        )
    return rows


def _retry_note(attrs: dict[str, Any]) -> str:
    return f"retry of trial {attrs['retry_of']}" if "retry_of" in attrs else ""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of `columns` (Markdown pipes, so it pastes into docs)."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def write_results(study: Any, spec: Any) -> dict[str, Any]:
    """Print the table and write results.csv/json, best_config.yaml (when a trial completed) and history.png."""
    out: Path = spec.out
    rows = trial_rows(study, spec.space)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running", "waiting")}
    columns = ["trial", "state", *spec.space, "value", "epochs", "seconds"] + (
        ["note"] if any(r["note"] for r in rows) else []
    )
    print(f"\n{spec.monitor} ({spec.mode}) per trial, study '{spec.study}':")
    print(format_table(rows, columns))
    summary: dict[str, Any] = {
        "study": spec.study,
        "storage": spec.url,
        "monitor": spec.monitor,
        "mode": spec.mode,
        "counts": counts,
        "trials": rows,
        "best": None,
    }
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        cfg = absolute_data_paths(trial_config(spec.base, best.params, None))  # works from any folder
        dump_config(cfg, out / "best_config.yaml")
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
            "config": str(out / "best_config.yaml"),
        }
        shown = "  ".join(f"{k}={_cell(v)}" for k, v in best.params.items())
        print(f"best: trial {best.number}, {spec.monitor} {best.value:.4f}, {shown}")
        print(f"retrain it: python tools/train.py --config {out / 'best_config.yaml'}")
    else:
        print("no trial completed yet: no best config.")
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; results in {out}", flush=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        plot_history(study, spec, out / "history.png")
    return summary


def plot_history(study: Any, spec: Any, path: Path) -> None:
    """Left: each trial's value and the best so far; right: the monitored metric per epoch, pruned ones grey."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))  # its own Agg canvas: no pyplot state
    FigureCanvasAgg(fig)
    history, curves = fig.subplots(1, 2)
    better = max if spec.mode == "max" else min
    best: float | None = None
    steps_x, steps_y = [], []
    styles = {"COMPLETE": ("o", "tab:blue"), "PRUNED": ("x", "tab:gray"), "FAIL": ("v", "tab:red")}
    labelled: set[str] = set()
    for t in study.trials:
        name = t.state.name
        if t.value is not None and name in styles:
            marker, color = styles[name]
            label = None if name in labelled else name.lower()
            labelled.add(name)
            history.plot([t.number], [t.value], marker, color=color, label=label)
        if name == "COMPLETE" and t.value is not None:
            best = t.value if best is None else better(best, t.value)
        if best is not None:
            steps_x.append(t.number)
            steps_y.append(best)
        if t.intermediate_values:
            epochs = sorted(t.intermediate_values)
            values = [t.intermediate_values[e] for e in epochs]
            pruned = name == "PRUNED"
            curves.plot(epochs, values, "-" if not pruned else "--", marker=".", lw=1,
                        color="tab:gray" if pruned else None, alpha=0.7 if pruned else 1.0,
                        label=f"#{t.number}" if not pruned else None)  # fmt: skip
    if steps_x:
        history.step(steps_x, steps_y, where="post", color="tab:orange", label="best so far")
    history.set(title=f"optimization history ({spec.study})", xlabel="trial", ylabel=spec.monitor)
    curves.set(title="per epoch (pruned: dashed grey)", xlabel="epoch", ylabel=spec.monitor)
    if labelled or steps_x:
        history.legend(fontsize=8)
    if any(t.state.name == "COMPLETE" and t.intermediate_values for t in study.trials):
        curves.legend(fontsize=7, ncol=2)
    from matplotlib.ticker import MaxNLocator

    for ax in (history, curves):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
