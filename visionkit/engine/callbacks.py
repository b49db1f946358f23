"""Loop hooks: the events of a run, the state callbacks see, and the built-in callbacks.

Events, in order: `on_fit_start`, then per epoch `on_epoch_start`, `on_batch_end` after every training
batch (`state.updated` says whether it completed an optimizer update), `on_log` at each logging interval;
at the epoch's end the built-in validator runs first (`on_validation_end`), then `on_epoch_end` reaches
the other callbacks, and the checkpointer, last of all, saves (`on_checkpoint_saved`), so a checkpoint
holds what every callback did; finally `on_fit_end`, or `on_exception` when the run fails. Validation,
EMA, checkpointing, early stopping, the run files and the progress bar are callbacks too; user callbacks
come from `callbacks:` in the config (resolved through the CALLBACKS registry) and from
`visionkit.train(..., callbacks=[...])`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionkit.registry import CALLBACKS

EVENTS = (
    "on_fit_start",
    "on_epoch_start",
    "on_batch_end",
    "on_log",
    "on_epoch_end",
    "on_validation_end",
    "on_checkpoint_saved",
    "on_fit_end",
    "on_exception",
)


@dataclass
class LoopState:
    """What callbacks see of a run; callbacks may set `stop` (and `stop_reason`) to end it."""

    cfg: dict[str, Any]
    run_dir: Path
    is_main: bool
    epochs: int
    monitor: str
    monitor_mode: str
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    batches_per_epoch: int = 0
    updated: bool = False  # the last training batch completed an optimizer update
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation's scalars
    best_value: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    improved: bool = False  # the last validation improved the monitored metric
    validation_seconds: float = 0.0  # how long the last validation took
    last_loss: dict[str, float] = field(default_factory=dict)
    stop: bool = False
    stop_reason: str = ""


class Callback:
    """Base class: override the events you need. `order` sorts callbacks (lower runs first)."""

    order: int = 50

    def on_fit_start(self, state: LoopState) -> None:
        """The run is set up (and restored, when resuming); nothing has trained yet in this process."""

    def on_epoch_start(self, state: LoopState) -> None:
        """An epoch (or the rest of one, after a resume) begins."""

    def on_batch_end(self, state: LoopState) -> None:
        """A training batch is done; `state.updated` tells whether the optimizers stepped."""

    def on_log(self, state: LoopState, record: dict[str, Any]) -> None:
        """A record of averaged training losses, learning rate and throughput (every `trainer.log_every`)."""

    def on_epoch_end(self, state: LoopState) -> None:
        """An epoch is done (`state.epoch` already counts it)."""

    def on_validation_end(self, state: LoopState, record: dict[str, Any]) -> None:
        """A validation is done: `record` holds step, epoch and the val/ scalars; `state.improved` is set."""

    def on_checkpoint_saved(self, state: LoopState, path: Path, best: bool) -> None:
        """A checkpoint was written to `path` (rank 0)."""

    def on_fit_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        """The run finished; `summary` is what summary.json holds."""

    def on_exception(self, state: LoopState, error: BaseException) -> None:
        """The run failed (or was interrupted) with `error`; it is re-raised afterwards."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (plain types and tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class CallbackList:
    """Calls each event on the callbacks that implement it, in `order`."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = sorted(callbacks, key=lambda c: getattr(c, "order", 50))
        self._by_event = {e: [getattr(c, e) for c in self.callbacks if _implements(c, e)] for e in EVENTS}

    def emit(self, event: str, *args: Any) -> None:
        """Call `event(*args)` on every callback that has it."""
        for fn in self._by_event[event]:
            fn(*args)

    def _keys(self) -> list[tuple[str, Any]]:
        """(key, callback): the class name, with `#n` for the n-th further instance of a class."""
        seen: dict[str, int] = {}
        out = []
        for c in self.callbacks:
            name = type(c).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name] - 1}", c))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Each stateful callback's state, by class name (numbered for repeated classes)."""
        states = {key: c.state_dict() for key, c in self._keys() if hasattr(c, "state_dict")}
        return {key: state for key, state in states.items() if state}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Give each callback its saved state."""
        for key, c in self._keys():
            if key in states and hasattr(c, "load_state_dict"):
                c.load_state_dict(states[key])


def _implements(callback: Any, event: str) -> bool:
    """True when the callback defines `event` (a duck-typed object, or a Callback subclass overriding it)."""
    fn = getattr(type(callback), event, None)
    return fn is not None and fn is not getattr(Callback, event, None)


# -- built-in callbacks ------------------------------------------------------------------------------
class EarlyStopping(Callback):
    """Stop after `patience` validations without improvement of the monitored metric."""

    order = 20

    def __init__(self, patience: int) -> None:
        self.patience, self.rounds_without_gain = patience, 0

    def on_validation_end(self, state: LoopState, record: dict[str, Any]) -> None:
        """Count validations without improvement; stop the run at `patience`."""
        self.rounds_without_gain = 0 if state.improved else self.rounds_without_gain + 1
        if self.rounds_without_gain >= self.patience:
            state.stop = True
            state.stop_reason = f"early stop: {state.monitor} has not improved for {self.patience} validation rounds"

    def state_dict(self) -> dict[str, Any]:
        """The counter."""
        return {"rounds_without_gain": self.rounds_without_gain}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counter."""
        self.rounds_without_gain = int(state.get("rounds_without_gain", 0))


class Checkpointer(Callback):
    """Writes last.pt at each epoch's end and every `checkpoint_every` updates, best.pt after an improvement.

    It runs after every other callback, so a checkpoint holds what they did (counters, schedules, RNG draws).
    """

    order = 1000

    def __init__(self, save: Callable[[bool], list[Path]], every: int | None, emit: Callable[..., None]) -> None:
        self.save, self.every, self.emit = save, every, emit
        self.saved_at: tuple[int, int, int] | None = None  # (step, epoch, batch_in_epoch) of the last save
        self.validated = False  # a validation ran since the last save
        self.best = False  # ... and improved the monitored metric

    def write(self, state: LoopState) -> None:
        """Save now: last.pt, and best.pt when the last validation improved."""
        for path in self.save(self.best):
            self.emit("on_checkpoint_saved", state, path, path.name == "best.pt")
        self.saved_at = (state.step, state.epoch, state.batch_in_epoch)
        self.validated = self.best = False

    def on_batch_end(self, state: LoopState) -> None:
        """Save every `checkpoint_every` updates."""
        if state.updated and self.every and state.step % self.every == 0:
            self.write(state)

    def on_validation_end(self, state: LoopState, record: dict[str, Any]) -> None:
        """Remember that the next save follows a validation (and whether it is the best)."""
        self.validated, self.best = True, state.improved

    def on_epoch_end(self, state: LoopState) -> None:
        """Save last (and best), unless nothing changed since the last save."""
        if self.validated or self.saved_at != (state.step, state.epoch, state.batch_in_epoch):
            self.write(state)


class EMA(Callback):
    """Keeps an exponential moving average of the weights (with warm-up), updated after every optimizer update."""

    order = 10

    def __init__(self, module: Any, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel

        from visionkit.engine.evaluation import ema_with_warmup

        self.module = module
        self.model = AveragedModel(module, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)

    def on_batch_end(self, state: LoopState) -> None:
        """Fold the new weights into the average."""
        if state.updated:
            self.model.update_parameters(self.module)


class Validator(Callback):
    """Runs validation every `val_every` epochs and when the run ends (through the trainer's `validate`)."""

    order = 5

    def __init__(self, validate: Callable[[], None], every: int, done: Callable[[], bool]) -> None:
        self.validate, self.every, self.done = validate, every, done

    def on_epoch_end(self, state: LoopState) -> None:
        """Validate when due: every n-th finished epoch, and at the end of the run."""
        finished = state.batch_in_epoch == 0
        if (finished and state.epoch % self.every == 0) or self.done() or state.stop:
            self.validate()


class ProgressBar(Callback):
    """A tqdm bar per epoch on a terminal (or always with trainer.progress=always): loss, lr, images/s."""

    order = 1  # closes its bar before the validator prints

    def __init__(self, mode: Any) -> None:
        self.mode, self.bar = mode, None

    def on_epoch_start(self, state: LoopState) -> None:
        """Open the epoch's bar."""
        if not state.is_main or not self.mode or (self.mode is True and not sys.stderr.isatty()):
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=state.batches_per_epoch,
            initial=state.batch_in_epoch,
            desc=f"epoch {state.epoch + 1}",
            leave=False,
            mininterval=0.5,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_batch_end(self, state: LoopState) -> None:
        """Advance the bar."""
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, state: LoopState, record: dict[str, Any]) -> None:
        """Show the latest losses, lr and throughput."""
        if self.bar is not None:
            shown = {k.removeprefix("train/").replace("/", "_"): f"{v:.4f}" for k, v in state.last_loss.items()}
            rate = record.get("images_per_s")
            self.bar.set_postfix(**shown, lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}" if rate else "-", refresh=False)

    def on_epoch_end(self, state: LoopState) -> None:
        """Close the bar."""
        self.close()

    def on_fit_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        """Close a bar left open by a run that stopped mid-epoch."""
        self.close()

    on_exception = on_fit_end  # type: ignore[assignment]

    def close(self) -> None:
        """Close the open bar, if any."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunFiles(Callback):
    """metrics.jsonl, curves.png, summary.json and the per-epoch line (rank 0)."""

    order = 80

    def __init__(self) -> None:
        self.report: Any = None
        self.keep_bytes: int | None = None  # a resumed run: metrics.jsonl's length when its checkpoint was saved

    def on_fit_start(self, state: LoopState) -> None:
        """Open metrics.jsonl (cut back to the resumed checkpoint, so each step is in it once)."""
        from visionkit.engine.report import RunReport

        keep = 0 if state.step == 0 else self.keep_bytes  # new run: a fresh file; an older checkpoint: append
        self.report = RunReport(state.run_dir, state.monitor, enabled=state.is_main, keep_bytes=keep)

    def state_dict(self) -> dict[str, Any]:
        """How much of metrics.jsonl this checkpoint covers."""
        return {"metrics_bytes": self.report.size() if self.report is not None else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Remember the length to cut metrics.jsonl back to when the run opens it."""
        self.keep_bytes = state.get("metrics_bytes")

    def on_log(self, state: LoopState, record: dict[str, Any]) -> None:
        """Append a training record."""
        self.report.log(record)

    def on_validation_end(self, state: LoopState, record: dict[str, Any]) -> None:
        """Append the validation record, redraw the curves, print the epoch line."""
        from visionkit.engine.report import epoch_line

        self.report.log(record)
        if state.is_main:
            self.report.curves()
            line = epoch_line(
                state.epoch, state.epochs, state.step, state.last_loss, state.metrics, state.best_value,
                state.validation_seconds,
            )  # fmt: skip
            print(line, flush=True)

    def on_fit_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        """Write summary.json and the final curves."""
        self.report.summary(summary)
        self.report.curves()
        self.report.close()

    def on_exception(self, state: LoopState, error: BaseException) -> None:
        """Close metrics.jsonl."""
        if self.report is not None:
            self.report.close()


# -- loggers available from the config -----------------------------------------------------------------
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
        from visionkit.errors import ConfigError

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
