"""Test plugin: a callback that kills its own process at a chosen moment (env VK_KILL=event:n)."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch

from visionkit import Callback
from visionkit.registry import CALLBACKS


@CALLBACKS.register("killer")
class Killer(Callback):
    """VK_KILL: batch:N (SIGKILL at update N), validation:N (SIGKILL after the N-th validation of this process),
    save:N (SIGKILL half-way through the N-th torch.save), sigint:N / sigterm:N / sigint2:N (one signal, or two,
    at update N)."""

    order = 999  # before the checkpointer: a kill at a batch end comes before that batch's save

    def __init__(self) -> None:
        event, _, n = os.environ.get("VK_KILL", "").partition(":")
        self.event, self.n, self.count = event, int(n or 0), 0
        if event == "save":
            real_save = torch.save

            def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
                self.count += 1
                if self.count == self.n:
                    with open(f, "wb") as out:
                        out.write(b"PK\x03\x04 half a checkpoint")
                    os.kill(os.getpid(), signal.SIGKILL)
                real_save(obj, f, *args, **kwargs)

            torch.save = dying_save

    def on_batch_end(self, state: Any) -> None:
        if not (state.updated and state.step == self.n):
            return
        if self.event == "batch":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.event == "sigterm-group":  # as a terminal, torchrun or a scheduler does: every process of the group
            os.killpg(os.getpgrp(), signal.SIGTERM)
        elif self.event in ("sigint", "sigint2", "sigterm"):
            sig = signal.SIGTERM if self.event == "sigterm" else signal.SIGINT
            for _ in range(2 if self.event == "sigint2" else 1):
                os.kill(os.getpid(), sig)

    def on_validation_end(self, state: Any, record: dict[str, Any]) -> None:
        self.count += self.event == "validation"
        if self.event == "validation" and self.count == self.n:
            os.kill(os.getpid(), signal.SIGKILL)
