"""torchrun restarts: a worker group that torchrun restarts continues the run its launch started.

When a worker dies, `torchrun --max-restarts=N` stops the others and starts the whole group again with the
same command line. Without help that restart would begin a new run (a new timestamped run dir, or a refusal
of a --work-dir that already holds a checkpoint). Rank 0 therefore leaves `launch.json` in the run dir, naming
the launch (torchrun's run id, the host and the launching agent); a worker started by the same launch finds that
marker and resumes from the run's `checkpoints/last.pt`, or reuses the dir when nothing was saved yet.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARKER = "launch.json"


def launch_identity(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Who launched this process: torchrun's run id, host and agent (stable over restarts); None outside torchrun."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env:
        return None
    # The agent keeps one log folder for its whole life (.../<run id>_<random>/attempt_<n>/<rank>/error.json); its
    # name is unique and survives restarts, unlike a wrapper script's pid. Fall back to the parent (the agent).
    error_file = Path(env.get("TORCHELASTIC_ERROR_FILE", ""))
    attempt = next((p for p in error_file.parents if p.name.startswith("attempt_")), None)
    agent = str(attempt.parent) if attempt is not None else f"pid {os.getppid()}"
    return {
        "run_id": env["TORCHELASTIC_RUN_ID"],
        "host": socket.gethostname(),
        "agent": agent,
        "nodes": int(env.get("GROUP_WORLD_SIZE", "1")),
    }


def same_launch(marker: Mapping[str, Any], me: Mapping[str, Any]) -> bool:
    """True when a run dir's marker was written by this torchrun launch (an earlier attempt of it).

    On one node the agent identifies the launch. Across nodes each node has its own agent and rank 0 may move to
    another node after a restart, so only a user-chosen rendezvous id (--rdzv-id, shared by all nodes) can.
    """
    if marker.get("run_id") != me["run_id"]:
        return False
    if me["nodes"] > 1:
        return me["run_id"] not in ("", "none")
    return marker.get("host") == me["host"] and marker.get("agent") == me["agent"]


def mark_run_dir(run_dir: str | Path) -> None:
    """Record in the run dir which torchrun launch writes it (rank 0, once the dir exists); no-op outside torchrun."""
    me = launch_identity()
    if me is None:
        return
    path = Path(run_dir) / MARKER
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(me, indent=2) + "\n")
    os.replace(tmp, path)


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The launch marker of a run dir, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_launch_dir(me: Mapping[str, Any], work_dir: str | None, task: str, runs: Path = Path("runs")) -> Path | None:
    """The run dir an earlier attempt of this launch wrote: `work_dir`, or the matching runs/<task>/* dir."""
    candidates = [Path(work_dir)] if work_dir else sorted((runs / task).glob(f"*/{MARKER}"))
    for candidate in candidates:
        run_dir = candidate if work_dir else candidate.parent
        marker = read_marker(run_dir)
        if marker is not None and same_launch(marker, me):
            return run_dir
    return None


def elastic_resume(resume: str | Path | None, work_dir: str | None, task: str) -> tuple[str | Path | None, Path | None]:
    """Under a torchrun restart: (this launch's last.pt, or `resume` unchanged; the run dir to reuse, or None).

    `work_dir` is the run's chosen folder (--work-dir, a work_dir= override or the config's), None for
    runs/<task>/<time>. Outside torchrun, or when no earlier attempt of this launch left a run dir, `resume` comes
    back unchanged (a first start, or a restart killed before its run dir existed, starts as the command line
    says). A launch that began with `--resume PATH` continues from the run's newer last.pt once it saved one.
    A restart killed before its first checkpoint reuses the run dir it made (the second value).
    """
    me = launch_identity()
    if me is None:
        return resume, None
    chosen = work_dir
    explicit = resume is not None and str(resume) != "auto"
    if explicit and chosen is None:  # the run a resume continues: the checkpoint's run dir
        path = Path(str(resume))
        chosen = str(path if path.is_dir() else path.parent.parent)
    run_dir = find_launch_dir(me, chosen, task)
    rank0 = os.environ.get("RANK", "0") == "0"
    if run_dir is None:
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        if restarted and me["nodes"] > 1 and me["run_id"] in ("", "none") and rank0:
            print(
                "torchrun restarted the workers, but without --rdzv-id a multi-node job cannot find its run: "
                "this attempt starts as its command line says. Give --rdzv-id=JOB and --work-dir on a shared "
                "filesystem.",
                flush=True,
            )
        return resume, None
    last = run_dir / "checkpoints" / "last.pt"
    if explicit and not last.is_file():
        return resume, None  # nothing newer than the checkpoint the launch started from
    if rank0:
        what = f"resuming from {last}" if last.is_file() else "no checkpoint yet, starting it again"
        print(f"torchrun restart of the workers: continuing the run in {run_dir} ({what})", flush=True)
    return (last, None) if last.is_file() else (None, run_dir)
