"""Run output: metrics.jsonl, the per-epoch summary line, curves.png and summary.json (rank 0 only)."""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from visionkit.engine.sizing import duration
from visionkit.errors import ConfigError

try:  # file locks: fcntl on POSIX, msvcrt on Windows
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, float]
    best: dict[str, float]
    best_checkpoint: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


def default_run_dir(cfg: dict[str, Any]) -> Path:
    """`work_dir` from the config, else runs/<task>/<timestamp> (made unique)."""
    if cfg.get("work_dir"):
        return Path(cfg["work_dir"])
    base = Path("runs") / cfg["task"] / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def check_run_dir(run_dir: Path) -> None:
    """Fail early, creating nothing, when the run folder could not be created or written (a ConfigError)."""
    import errno

    with _run_dir_errors(run_dir):
        existing = run_dir
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} ('{existing}' is read-only)")


def prepare_run_dir(run_dir: Path, new_run: bool = True) -> RunLock:
    """Create `<run>/checkpoints`, lock the folder for this run, remove temporaries a killed save left.

    A ConfigError if it cannot be written, when another run holds the lock, or when a new run finds a run there
    (one that finished while this one was set up)."""
    with _run_dir_errors(run_dir):
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    if new_run and (run_dir / "checkpoints" / "last.pt").is_file():
        lock.release()
        raise ConfigError(
            f"The work dir '{run_dir}' already holds a run (checkpoints/last.pt). Continue it with --resume auto, "
            "or choose another --work-dir for a new run."
        )
    with _run_dir_errors(run_dir):
        for stale in (run_dir / "checkpoints").glob("*.tmp"):  # left by a save that was killed
            stale.unlink()
    return lock


class RunLock:
    """An OS file lock on a run folder while a run writes it; the OS releases it when the process ends (kill -9
    included), so a crashed run's folder can be resumed at once."""

    NAME = ".visionkit-run.lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / self.NAME
        with _run_dir_errors(run_dir):
            self.file = open(self.path, "a+")  # noqa: SIM115 - held open for the run's lifetime
        if not _try_lock(self.file):
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ConfigError(
                f"The run folder '{run_dir}' is in use by another run ({holder}): two runs writing one folder would "
                "destroy each other's checkpoints and logs. Wait for it to finish (then --resume auto continues it), "
                "or give this run another --work-dir."
            )
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        self.file.flush()

    def release(self) -> None:
        """Give the folder back (the lock file stays; an unlocked one means nothing)."""
        if not self.file.closed:
            _unlock(self.file)
            self.file.close()


def _try_lock(file: Any) -> bool:
    """Take an exclusive lock without waiting: False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:  # Windows
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _unlock(file: Any) -> None:
    if fcntl is not None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    elif msvcrt is not None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)


@contextmanager
def _run_dir_errors(run_dir: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"The run folder '{run_dir}' cannot be written: {reason}. Set --work-dir (work_dir) to a folder you "
            "can write, or leave it out for runs/<task>/<time> in the current directory."
        ) from None


class RunReport:
    """Writes one JSON record per logged step/epoch and draws the loss and metric curves."""

    def __init__(self, run_dir: Path, monitor: str, enabled: bool = True, keep_bytes: int | None = None) -> None:
        """Open metrics.jsonl for appending; a resumed run passes `keep_bytes`, the length its checkpoint saw.

        Lines past `keep_bytes` were written after that checkpoint by the process that died: the resumed run
        writes those steps again, so they are cut and every step is in the file once. The kept records seed
        the curves, which then cover the whole run.
        """
        self.run_dir, self.monitor, self.enabled = run_dir, monitor, enabled
        self.train: dict[str, list[tuple[int, float]]] = {}
        self.val: list[tuple[int, float]] = []
        self.others: dict[str, list[tuple[int, float]]] = {}  # every other scalar validation metric
        self._file = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        if path.is_file():
            if keep_bytes is not None and path.stat().st_size > keep_bytes:
                with open(path, "r+b") as f:
                    f.truncate(keep_bytes)
            for line in path.read_text().splitlines():
                try:
                    self._remember(json.loads(line))
                except ValueError:  # a line cut by a kill mid-write: drawn without it, kept in the file
                    continue
        self._file = open(path, "a")  # noqa: SIM115

    def _remember(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key.startswith("train/") and key.endswith("loss"):
                self.train.setdefault(key, []).append((record["step"], value))
        if self.monitor in record:
            self.val.append((record["step"], record[self.monitor]))
            for key, value in record.items():  # COCO's -1 marks an undefined figure: not drawn
                if key.startswith("val/") and key != self.monitor and isinstance(value, float) and value != -1.0:
                    self.others.setdefault(key, []).append((record["step"], value))

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (step or epoch) to metrics.jsonl."""
        if not self._file:
            return
        self._remember(record)
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()

    def size(self) -> int:
        """Bytes written to metrics.jsonl so far (what a checkpoint records, to cut later lines on resume)."""
        return self._file.tell() if self._file else 0

    def curves(self) -> None:
        """Draw training loss, the monitored validation metric and every other scalar one against steps."""
        if not self.enabled or not (self.train or self.val):
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # A figure with its own Agg canvas: no pyplot state, the process's backend is left alone.
        fig = Figure(figsize=(15 if self.others else 10, 3.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3 if self.others else 2)
        for key, points in self.train.items():
            axes[0].plot(*zip(*points), lw=1, label=key)
        if len(self.train) > 1:
            axes[0].legend(fontsize=7)
        axes[0].set(title="training loss", xlabel="step")
        if self.val:
            axes[1].plot(*zip(*self.val), marker="o")
        axes[1].set(title=self.monitor, xlabel="step")
        if self.others:
            for key, points in list(self.others.items())[:16]:
                axes[2].plot(*zip(*points), lw=1, marker=".", label=key.removeprefix("val/"))
            axes[2].legend(fontsize=6, ncol=2)
            axes[2].set(title="other validation metrics", xlabel="step")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.run_dir / "curves.png", dpi=90)

    def summary(self, data: dict[str, Any]) -> None:
        """Write summary.json."""
        if self.enabled:
            (self.run_dir / "summary.json").write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")

    def close(self) -> None:
        """Close metrics.jsonl."""
        if self._file:
            self._file.close()
            self._file = None


def run_summary(
    task: str, state: Any, run_dir: Path, seconds: tuple[float, float], run: dict[str, Any], facts: Any
) -> dict[str, Any]:
    """What summary.json holds: the monitor, final and best metrics, checkpoints, counts, times, the data facts."""
    folder = run_dir / "checkpoints"
    return {
        "task": task,
        "monitor": state.monitor,
        "monitor_mode": state.monitor_mode,
        "final": state.metrics,
        "best": state.best_metrics,
        "best_value": state.best_value,
        "best_checkpoint": str(folder / "best.pt"),
        "last_checkpoint": str(folder / "last.pt"),
        "steps": state.step,
        "epochs": state.epoch,
        "nonfinite_updates": state.nonfinite_updates,
        "wall_time_s": round(seconds[0], 2),  # every process of the run (up to its checkpoint) and this one
        "wall_time_this_process_s": round(seconds[1], 2),
        **run,  # device, precision, world size, batches per rank
        "data": facts.to_dict(),
    }


KEY_METRICS = 2  # metrics besides the monitor on the epoch line


def epoch_line(
    epoch: int,
    epochs: int,
    step: int,
    train_loss: dict[str, float],
    metrics: dict[str, float],
    best: float | None,
    seconds: float,
    monitor: str | None = None,
    train_seconds: float | None = None,
    eta_seconds: float | None = None,
) -> str:
    """One compact line per validation: the losses, the monitor (with the best so far) and two more metrics,
    then labelled train and validation times and the ETA. Every metric is in metrics.jsonl."""
    parts = [f"epoch {epoch}/{epochs}", f"step {step}"]
    parts += [f"{k.removeprefix('train/')} {v:.4f}" for k, v in train_loss.items()]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
    if monitor in scalars:
        parts.append(f"{monitor} {scalars.pop(monitor):.4f}" + (f" (best {best:.4f})" if best is not None else ""))
    elif best is not None:
        parts.append(f"best {best:.4f}")
    parts += [f"{k} {v:.4f}" for k, v in list(scalars.items())[: KEY_METRICS if monitor in metrics else len(scalars)]]
    if train_seconds is not None:
        parts.append(f"train {train_seconds:.1f}s")
    parts.append(f"val {seconds:.1f}s")
    if eta_seconds is not None and eta_seconds > 0:
        parts.append(f"ETA {duration(eta_seconds)}")
    return "  ".join(parts)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
