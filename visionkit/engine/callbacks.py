"""The built-in callbacks: validation, checkpoints, early stopping, EMA, run files, progress and unfreezing.

The protocol they implement (events, `LoopState`, `Callback`) is `visionkit.engine.events`; the loggers a
config can add are `visionkit.engine.loggers`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from visionkit.engine import distributed as dist
from visionkit.engine import events, loggers
from visionkit.engine.finetune import FREEZE_ATTR, FreezeState
from visionkit.engine.report import RunReport, epoch_line
from visionkit.engine.sizing import duration
from visionkit.engine.tables import report_lines
from visionkit.errors import ConfigError, VisionkitDeprecationWarning


class EarlyStopping(events.Callback):
    """Stop after `patience` validations without improvement of the monitored metric."""

    order = 20

    def __init__(self, patience: int) -> None:
        self.patience, self.rounds_without_gain = patience, 0

    def on_validation_end(self, state: events.LoopState, record: dict[str, Any]) -> None:
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


class Checkpointer(events.Callback):
    """Writes last.pt at each epoch's end and every `checkpoint_every` updates, best.pt after an improvement.

    It runs after every other callback, so a checkpoint holds what they did (counters, schedules, RNG draws).
    """

    order = 1000

    def __init__(self, save: Callable[[bool], list[Path]], every: int | None, emit: Callable[..., None]) -> None:
        self.save, self.every, self.emit = save, every, emit
        self.saved_at: tuple[int, int, int] | None = None  # (step, epoch, batch_in_epoch) of the last save
        self.validated = False  # a validation ran since the last save
        self.best = False  # ... and improved the monitored metric

    def write(self, state: events.LoopState) -> None:
        """Save now: last.pt, and best.pt when the last validation improved."""
        for path in self.save(self.best):
            self.emit("on_checkpoint_saved", state, path, path.name == "best.pt")
        self.saved_at = (state.step, state.epoch, state.batch_in_epoch)
        self.validated = self.best = False

    def on_batch_end(self, state: events.LoopState) -> None:
        """Save every `checkpoint_every` updates."""
        if state.updated and self.every and state.step % self.every == 0:
            self.write(state)

    def on_validation_end(self, state: events.LoopState, record: dict[str, Any]) -> None:
        """Remember that the next save follows a validation (and whether it is the best)."""
        self.validated, self.best = True, state.improved

    def on_epoch_end(self, state: events.LoopState) -> None:
        """Save last (and best), unless nothing changed since the last save."""
        if self.validated or self.saved_at != (state.step, state.epoch, state.batch_in_epoch):
            self.write(state)


def ema_with_warmup(decay: float) -> Any:
    """EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates.

    Without the ramp the average keeps decay**n of the random initial weights (0.41 after 900
    updates at 0.999), which ruins samples and validation of short runs.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)

    return update


class EMA(events.Callback):
    """Keeps an exponential moving average of the weights (with warm-up), updated after every optimizer update."""

    order = 10

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = module
        self.model = AveragedModel(module, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)

    def on_batch_end(self, state: events.LoopState) -> None:
        """Fold the new weights into the average."""
        if state.updated:
            self.model.update_parameters(self.module)


class Validator(events.Callback):
    """Runs validation every `val_every` epochs and when the run ends (through the trainer's `validate`)."""

    order = 5

    def __init__(self, validate: Callable[[], None], every: int) -> None:
        self.validate, self.every = validate, every

    def on_epoch_end(self, state: events.LoopState) -> None:
        """Validate when due: every n-th finished epoch, and at the end of the run."""
        whole_epoch = state.batch_in_epoch == 0
        if (whole_epoch and state.epoch % self.every == 0) or state.finished or state.stop:
            self.validate()


PLAIN_EVERY = 30.0  # seconds between progress lines without a terminal (VISIONKIT_PROGRESS_SECONDS)


class ProgressBar(events.Callback):
    """A tqdm bar per epoch on a terminal (or always with trainer.progress=always): loss, lr, images/s."""

    order = 1  # closes its bar before the validator prints

    def __init__(self, mode: Any) -> None:
        self.mode, self.bar = mode, None
        self.every = float(os.environ.get("VISIONKIT_PROGRESS_SECONDS", PLAIN_EVERY))
        self.started, self.printed, self.first_batch = 0.0, 0.0, 0

    def on_fit_start(self, state: events.LoopState) -> None:
        """Start the clock of the plain progress lines."""
        self.started = self.printed = time.perf_counter()
        self.first_batch = state.epoch * state.batches_per_epoch + state.batch_in_epoch

    def on_epoch_start(self, state: events.LoopState) -> None:
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

    def on_batch_end(self, state: events.LoopState) -> None:
        """Advance the bar; without a terminal, print a progress line every `every` seconds (rate and ETA)."""
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode is True and state.is_main and time.perf_counter() - self.printed >= self.every:
            now = time.perf_counter()
            self.printed = now
            done = state.epoch * state.batches_per_epoch + state.batch_in_epoch
            total = state.epochs * state.batches_per_epoch
            rate = (done - self.first_batch) / max(now - self.started, 1e-9)
            eta = (total - done) / rate if rate > 0 else 0.0
            loss = "  ".join(f"{k.removeprefix('train/')} {v:.4f}" for k, v in state.last_loss.items())
            print(
                f"progress: epoch {state.epoch + 1}/{state.epochs} batch {state.batch_in_epoch}/"
                f"{state.batches_per_epoch}  step {state.step}  {rate:.2f} batches/s  {loss}  ETA {duration(eta)}",
                flush=True,
            )

    def on_log(self, state: events.LoopState, record: dict[str, Any]) -> None:
        """Show the latest losses, lr and throughput."""
        if self.bar is not None:
            shown = {k.removeprefix("train/").replace("/", "_"): f"{v:.4f}" for k, v in state.last_loss.items()}
            rate = record.get("images_per_s")
            self.bar.set_postfix(**shown, lr=f"{record['lr']:.2e}", img_s=f"{rate:.0f}" if rate else "-", refresh=False)

    def on_epoch_end(self, state: events.LoopState) -> None:
        """Close the bar."""
        self.close()

    def on_fit_end(self, state: events.LoopState, summary: dict[str, Any]) -> None:
        """Close a bar left open by a run that stopped mid-epoch."""
        self.close()

    on_exception = on_fit_end  # type: ignore[assignment]

    def close(self) -> None:
        """Close the open bar, if any."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunFiles(events.Callback):
    """metrics.jsonl, curves.png, summary.json and the per-epoch line (rank 0)."""

    order = 80

    def __init__(self) -> None:
        self.report: Any = None
        self.keep_bytes: int | None = None  # a resumed run: metrics.jsonl's length when its checkpoint was saved

    def on_fit_start(self, state: events.LoopState) -> None:
        """Open metrics.jsonl (cut back to the resumed checkpoint, so each step is in it once)."""
        keep = 0 if state.step == 0 else self.keep_bytes  # new run: a fresh file; an older checkpoint: append
        self.report = RunReport(state.run_dir, state.monitor, enabled=state.is_main, keep_bytes=keep)
        self.last_line = (time.perf_counter(), state.epoch)  # when and at which epoch the last epoch line was

    def state_dict(self) -> dict[str, Any]:
        """How much of metrics.jsonl this checkpoint covers."""
        return {"metrics_bytes": self.report.size() if self.report is not None else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Remember the length to cut metrics.jsonl back to when the run opens it."""
        self.keep_bytes = state.get("metrics_bytes")

    def on_log(self, state: events.LoopState, record: dict[str, Any]) -> None:
        """Append a training record."""
        self.report.log(record)

    def on_validation_end(self, state: events.LoopState, record: dict[str, Any]) -> None:
        """Append the validation record, redraw the curves, print the epoch line."""
        self.report.log(record)
        if state.is_main:
            self.report.curves()
            now, (then, then_epoch) = time.perf_counter(), self.last_line
            period, epochs = now - then, max(state.epoch - then_epoch, 1)
            self.last_line = (now, state.epoch)
            line = epoch_line(
                state.epoch, state.epochs, state.step, state.last_loss, state.metrics, state.best_value,
                state.validation_seconds, state.monitor, max(period - state.validation_seconds, 0.0),
                period / epochs * max(state.epochs - state.epoch, 0),
            )  # fmt: skip
            print(line, flush=True)

    def on_fit_end(self, state: events.LoopState, summary: dict[str, Any]) -> None:
        """Write summary.json and the final curves; print the per-class tables of the last validation."""
        if state.is_main:
            lines = [line for key in summary if key.endswith("_table") for line in report_lines(summary, [key], False)]
            if lines:
                print("\n".join(lines), flush=True)
        self.report.summary(summary)
        self.report.curves()
        self.report.close()

    def on_exception(self, state: events.LoopState, error: BaseException) -> None:
        """Close metrics.jsonl."""
        if self.report is not None:
            self.report.close()


class Unfreeze(events.Callback):
    """Trains the `model.freeze` parameters again from epoch `unfreeze_at` (derived from the epoch on resume)."""

    order = 20  # before user callbacks, so they see the epoch's trainable parameters

    def __init__(self, state: FreezeState, epoch: int) -> None:
        self.state, self.epoch = state, epoch

    def on_fit_start(self, state: events.LoopState) -> None:
        """Set the frozen state the (possibly resumed) epoch implies."""
        self.state.set_frozen(state.epoch < self.epoch)

    def on_epoch_start(self, state: events.LoopState) -> None:
        """Unfreeze when epoch `unfreeze_at` begins."""
        if self.state.frozen and state.epoch >= self.epoch:
            self.state.set_frozen(False)
            if state.is_main:
                print(f"epoch {state.epoch}: unfroze {len(self.state.params)} tensors ({self.state.patterns})")


def unfreeze_callbacks(cfg: dict[str, Any], module: nn.Module) -> list[events.Callback]:
    """The callbacks fine-tuning needs: unfreezing `model.freeze` at `trainer.unfreeze_at` (none without it)."""
    epoch = cfg["trainer"].get("unfreeze_at")
    state = getattr(module, FREEZE_ATTR, None)
    if epoch is None or state is None:
        return []
    if dist.is_distributed():
        # DDP only synchronises the parameters that required gradients when it was built.
        raise ConfigError(
            "trainer.unfreeze_at is not supported with several processes (torchrun) yet: DistributedDataParallel "
            "would not synchronise the unfrozen parameters. Train on one process, or run the frozen phase and "
            "then a second run without model.freeze."
        )
    return [Unfreeze(state, epoch)]


_MOVED = {"Callback": "visionkit", "LoopState": "visionkit", "CallbackList": "visionkit.engine.events"}
_MOVED |= {"EVENTS": "visionkit.engine.events", "CSVLogger": "visionkit.engine.loggers"}
_MOVED |= {"TensorBoardLogger": "visionkit.engine.loggers"}


def __getattr__(name: str) -> Any:
    """Earlier names of this module (`Callback`, `LoopState`, the loggers, ...): they warn and still resolve."""
    if name in _MOVED:
        warnings.warn(
            f"visionkit.engine.callbacks.{name} moved: import it from {_MOVED[name]} (the plugin API, "
            "visionkit.PLUGIN_API 2.0); the old name goes away in a later release.",
            VisionkitDeprecationWarning,
            stacklevel=2,
        )
        return getattr(loggers if name.endswith("Logger") else events, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
