"""The callback protocol: the events of a run, the state callbacks see, and the list that calls them.

Events, in order: `on_fit_start`, then per epoch `on_epoch_start`, `on_batch_end` after every training
batch (`state.updated` says whether it completed an optimizer update), `on_log` at each logging interval;
at the epoch's end the built-in validator runs first (`on_validation_end`), then `on_epoch_end` reaches
the other callbacks, and the checkpointer, last of all, saves (`on_checkpoint_saved`), so a checkpoint
holds what every callback did; finally `on_fit_end`, or `on_exception` when the run fails. The built-in
callbacks are in `visionkit.engine.callbacks`, the loggers a config can name in `visionkit.engine.loggers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """The run's counters and what callbacks see of it; callbacks may set `stop` (and `stop_reason`) to end it.

    It is the only copy of the loop counters: the trainer advances them here and saves them in checkpoints.
    """

    cfg: dict[str, Any]
    run_dir: Path
    is_main: bool
    epochs: int
    monitor: str
    monitor_mode: str
    step: int = 0  # optimizer updates done
    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # training batches done in the current epoch
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
    max_steps: int | None = None  # trainer.max_steps
    nonfinite_updates: int = 0  # updates whose loss was NaN/inf, counted up to the last log step

    @property
    def finished(self) -> bool:
        """True once `trainer.epochs` epochs or `trainer.max_steps` updates are done."""
        return self.epoch >= self.epochs or (self.max_steps is not None and self.step >= self.max_steps)


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
