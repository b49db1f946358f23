"""Loggers a config can name in `callbacks:` (the CALLBACKS registry): `csv` and `tensorboard`."""

from __future__ import annotations

from typing import Any

from visionkit.engine.events import Callback, LoopState
from visionkit.errors import ConfigError
from visionkit.registry import CALLBACKS


@CALLBACKS.register("csv")
class CSVLogger(Callback):
    """Writes every logged record to `<run>/metrics.csv` (one column per key, rewritten at validation and end)."""

    def __init__(self, filename: str = "metrics.csv") -> None:
        self.filename, self.rows = filename, []

    def on_fit_start(self, state: LoopState) -> None:
        """Keep the rows of earlier segments of a resumed run (those up to its step)."""
        import csv

        path = state.run_dir / self.filename
        self.rows = []
        if state.is_main and state.step > 0 and path.is_file():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(float(r.get("step") or 0)) <= state.step]

    def on_log(self, state: LoopState, record: dict[str, Any]) -> None:
        """Keep a training record."""
        self.rows.append(dict(record))

    def on_validation_end(self, state: LoopState, record: dict[str, Any]) -> None:
        """Keep a validation record and rewrite the file."""
        self.rows.append(dict(record))
        self.write(state)

    def on_fit_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        """Rewrite the file with everything."""
        self.write(state)

    def write(self, state: LoopState) -> None:
        """Write the rows seen so far (rank 0)."""
        import csv

        if not state.is_main or not self.rows:
            return
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        path = state.run_dir / self.filename
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)


@CALLBACKS.register("tensorboard")
class TensorBoardLogger(Callback):
    """Writes scalars (training losses, lr, throughput, validation metrics) for TensorBoard under `<run>/tb`."""

    def __init__(self, log_dir: str | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "callbacks: 'tensorboard' needs the tensorboard package: pip install 'visionkit[tensorboard]' "
                f"(or pip install tensorboard). ({exc})"
            ) from exc
        self.writer_cls, self.log_dir, self.writer = SummaryWriter, log_dir, None

    def on_fit_start(self, state: LoopState) -> None:
        """Open the event file (rank 0)."""
        if state.is_main:
            self.writer = self.writer_cls(log_dir=str(self.log_dir or state.run_dir / "tb"))

    def _scalars(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def on_log(self, state: LoopState, record: dict[str, Any]) -> None:
        """Write training scalars."""
        self._scalars(record)

    def on_validation_end(self, state: LoopState, record: dict[str, Any]) -> None:
        """Write validation scalars."""
        self._scalars(record)

    def on_fit_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        """Close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    on_exception = on_fit_end  # type: ignore[assignment]
