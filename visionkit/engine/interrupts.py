"""Ctrl-C and SIGTERM: the first one saves a checkpoint at the end of the current batch, a second one stops at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import torch

from visionkit.engine import distributed as dist
from visionkit.engine.callbacks import Checkpointer
from visionkit.engine.events import Callback, LoopState

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal after saving a checkpoint; `signum` is the signal and `saved` the paths."""

    def __init__(self, signum: int, saved: list[str]) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.saved = signum, saved


def exit_status(error: BaseException) -> int:
    """The shell's convention for a process ended by a signal: 128 + the signal number (130 for Ctrl-C)."""
    return 128 + (error.signum if isinstance(error, Interrupted) else signal.SIGINT)


class GracefulStop(Callback):
    """Turns the first SIGINT/SIGTERM into a checkpoint at the next batch end, then `Interrupted`.

    Under torchrun every rank gets the signal, but maybe at different batches: the ranks agree on it with
    a one-number all-reduce at each logging step (where the loop already waits for the device), so they
    save and stop at the same batch. A second signal before that raises KeyboardInterrupt at once.
    """

    order = 1001  # after the checkpointer: a batch's own saves and callbacks are done first

    def __init__(self, checkpointer: Checkpointer, log_every: int) -> None:
        self.checkpointer, self.log_every = checkpointer, log_every
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def on_fit_start(self, state: LoopState) -> None:
        """Install the handlers (only the main thread of a process can)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.owner = os.getpid()
        for sig in HANDLED:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner:  # a forked DataLoader worker inherited the handler
            if os.getppid() == self.owner:
                return  # Ctrl-C / killpg reach the whole group: the run saves, then shuts its workers down
            signal.signal(signum, signal.SIG_DFL)  # orphaned: end as a process without the handler would
            os.kill(os.getpid(), signum)
            return
        if self.signum is not None:  # the second signal: no more waiting
            self.restore()
            raise Interrupted(signum, [])
        self.signum = signum
        if dist.is_main():
            print(
                f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this batch "
                "(send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def on_batch_end(self, state: LoopState) -> None:
        """Save and stop when a signal came: at the end of an update (all ranks at the same one under torchrun)."""
        signum = self.signum
        if not state.updated:  # inside an accumulation window: its gradients are not in a checkpoint
            return
        if dist.is_distributed():
            if not (state.updated and state.step % self.log_every == 0):
                return
            flag = dist.all_reduce_sum(torch.tensor([1.0 if signum else 0.0]))
            signum = (signum or signal.SIGTERM) if flag.item() > 0 else None
        if signum is None:
            return
        self.checkpointer.write(state)
        dist.barrier()  # rank 0 has written last.pt before any rank exits (torchrun stops the rest on the first exit)
        saved = [str(state.run_dir / "checkpoints" / "last.pt")]
        if dist.is_main():
            print(
                f"saved {saved[0]} at step {state.step}; continue with: --resume auto --work-dir {state.run_dir}",
                file=sys.stderr,
                flush=True,
            )
        raise Interrupted(signum, saved)

    def on_fit_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        """Put the previous handlers back."""
        self.restore()

    def on_exception(self, state: LoopState, error: BaseException) -> None:
        """Put the previous handlers back."""
        self.restore()

    def restore(self) -> None:
        """Reinstall the handlers that were there before the run."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
