"""One optimizer update, owned by one object: the trainer, the dry run and the LR finder all step through it.

An update is `trainer.accumulate` training batches. For each batch every due optimizer group (`OptimizerGroup.every`)
runs the task's training step under autocast, with only its own parameters requiring gradients when there are
several groups, and backpropagates its (scaled, accumulation-divided) `loss`; DDP's gradient all-reduce waits for
the update's last batch (`no_sync`). At the update's end the optimizers are stepped: with one group after the last
batch, with several alternately (each right after its own backward, so the next trains against the new weights).
A step unscales and clips the gradients, steps the optimizer through the GradScaler and then its schedule.

Skips. A training step that returns None skips its optimizer's update (all of them with one group). A non-finite
loss skips the update (`finite_check`):
- "update": the loss is checked on the host before the step; the skipped update leaves the weights, optimizer
  state, schedule, step count and EMA exactly as they were. On a CPU this costs nothing.
- "log": nothing waits for the device: the gradients of a non-finite update are zeroed on the device before the
  step, so no NaN or inf reaches the weights or the optimizer state. The update still counts: the step count, the
  schedule and the EMA advance, and an optimizer with momentum (SGD momentum, Adam) still moves the weights by its
  running averages. The count is read at the next `check()` (the trainer's log step, where it synchronises
  anyway). Use it on GPUs, where a host read per update stalls the device queue.
`max_bad_steps` non-finite updates in a row stop training with a TrainingError.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from visionkit.engine.contracts import OptimizerGroup, StepContext, Task
from visionkit.errors import VisionkitError

FINITE_CHECKS = ("auto", "update", "log")


class TrainingError(VisionkitError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says what to try."""


def finite_check_for(choice: str, device: torch.device) -> str:
    """`auto` is "update" on the CPU (a host read costs nothing there) and "log" on accelerators."""
    if choice != "auto":
        return choice
    return "update" if device.type == "cpu" else "log"


@dataclass
class Updater:
    """Runs training steps batch by batch and steps the optimizers at the end of each update (see module doc)."""

    task: Task
    groups: Mapping[str, OptimizerGroup]
    optimizers: Mapping[str, torch.optim.Optimizer]
    schedulers: Mapping[str, Any] | None  # None: the caller sets the learning rates itself (LR finder)
    scaler: torch.amp.GradScaler
    autocast: Callable[[], Any]
    device: torch.device
    accumulate: int = 1
    clip_grad: float | None = None
    ddp: nn.Module | None = None  # the DistributedDataParallel wrapper, for no_sync inside an update
    finite_check: str = "update"
    max_bad_steps: int | None = 5  # None: never stop (the caller decides)
    warn: Callable[[str], None] = print
    before_step: Callable[[str], None] | None = None  # called with a group's name just before its optimizer steps
    keep_outputs: bool = False  # keep each group's last training-step outputs (detached) in `last_outputs`
    last_outputs: dict[str, dict[str, torch.Tensor] | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.multi = len(self.groups) > 1
        self.main = "main" if "main" in self.optimizers else next(iter(self.optimizers))
        self.skipped: set[str] = set()  # groups whose training step returned None in this update
        self.sums: dict[str, torch.Tensor] = {}  # losses since the last `take_losses`, summed on the device
        self.bad_steps = 0
        self.nonfinite = 0  # non-finite updates seen so far ("log": up to the last check)
        self.at_step = 0  # updates done before this batch (for messages)
        self._reset_finite()
        self.bad_run = torch.zeros((), dtype=torch.long, device=self.device)  # "log": bad updates in a row
        self.worst_run = torch.zeros((), dtype=torch.long, device=self.device)
        self.bad_total = torch.zeros((), dtype=torch.long, device=self.device)

    def replace(self, **changes: Any) -> Updater:
        """A fresh updater over the same groups with some settings changed (e.g. no schedules)."""
        return dataclasses.replace(self, **changes)

    def train_batch(self, batch: Any, ctx: StepContext, ends_update: bool) -> bool:
        """Train one batch for every due group; at the end of an update step; True when the optimizers stepped."""
        self.at_step = ctx.step
        for name, group in self.groups.items():
            if ctx.step % group.every:
                continue
            ctx.optimizer = name
            if self.multi:
                self.toggle(name)
            sync = self.ddp.no_sync() if self.ddp is not None and not ends_update else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    out = self.task.training_step(batch, ctx)
                if self.keep_outputs:
                    self.last_outputs[name] = None if out is None else {k: _detached(v) for k, v in out.items()}
                if out is None:
                    self.skipped.add(name)
                    continue
                loss = out["loss"]
                self.scaler.scale(loss / self.accumulate if self.accumulate > 1 else loss).backward()
            self.finite &= torch.isfinite(loss.detach())
            self._add_losses(out, name if self.multi else None)
            if self.multi and ends_update and name not in self.skipped:
                if self.finite_check == "update" and not bool(self.finite):
                    break
                self.step_optimizer(name)  # alternate: the next group trains against these new weights
        if not ends_update:
            return False
        if self.multi:
            self.toggle(None)
        return self._end_update()

    def _end_update(self) -> bool:
        """Step the optimizer(s) unless every step was skipped or the loss was not finite; reset for the next."""
        skipped, self.skipped = self.skipped, set()
        if skipped and (not self.multi or skipped >= set(self.groups)):
            self.zero_grad()  # a skipped step leaves weights, state, schedule and step count alone
            self._reset_finite()
            return False
        for name in skipped:  # several optimizers: drop what a skipped one accumulated in this update
            self.optimizers[name].zero_grad(set_to_none=True)
        if self.finite_check == "update":
            if not bool(self.finite):
                self._skip_update()
                self._reset_finite()
                return False
            self.bad_steps = 0
        else:
            bad = (~self.finite).long()
            self.bad_run = (self.bad_run + 1) * bad
            self.worst_run = torch.maximum(self.worst_run, self.bad_run)
            self.bad_total += bad
        if not self.multi:
            self.step_optimizer(self.main)
        self.scaler.update()
        self._reset_finite()
        return True

    def step_optimizer(self, name: str) -> None:
        """Unscale, clip and step one optimizer and its schedule, then clear its gradients."""
        opt, params = self.optimizers[name], self.groups[name].params
        if self.before_step is not None:
            self.before_step(name)
        if self.finite_check == "log":  # a non-finite update adds no NaN: its gradients become zeros
            bad = ~self.finite
            for p in params:
                if p.grad is not None:
                    p.grad.masked_fill_(bad, 0.0)
        if self.clip_grad:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        self.scaler.step(opt)
        if self.schedulers is not None:
            self.schedulers[name].step()
        opt.zero_grad(set_to_none=True)

    def check(self, step: int) -> None:
        """In "log" mode, report the non-finite updates since the last check (one host read); stop after too many.

        `nonfinite` then counts every non-finite update so far, in either mode."""
        if self.finite_check != "log":
            return
        total, worst = int(self.bad_total), int(self.worst_run)
        self.nonfinite += total
        if total:
            self.warn(f"warning: non-finite loss in {total} update(s) before step {step}; their gradients were zeroed")
            self.bad_total.zero_()
        if self.max_bad_steps is not None and worst >= self.max_bad_steps:
            raise TrainingError(_too_many(worst, step))
        self.worst_run.copy_(self.bad_run)

    def toggle(self, name: str | None) -> None:
        """Let only the parameters of optimizer `name` require gradients (all of them for None)."""
        for other, group in self.groups.items():
            flag = name is None or other == name
            for p in group.params:
                p.requires_grad_(flag)

    def zero_grad(self) -> None:
        """Drop every optimizer's gradients."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def take_losses(self) -> dict[str, torch.Tensor]:
        """The losses summed since the last call (on the device), and start a new sum."""
        sums, self.sums = self.sums, {}
        return sums

    def _add_losses(self, out: dict[str, torch.Tensor], optimizer: str | None) -> None:
        """Add a step's named losses to the sums (no host sync); `loss` is per optimizer when there are several."""
        for key, value in out.items():
            key = f"{optimizer}/{key}" if optimizer and key == "loss" else key
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def _reset_finite(self) -> None:
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)

    def _skip_update(self) -> None:
        self.zero_grad()
        self.bad_steps += 1
        self.nonfinite += 1
        self.warn(f"warning: non-finite loss at step {self.at_step}; update skipped ({self.bad_steps} in a row)")
        if self.max_bad_steps is not None and self.bad_steps >= self.max_bad_steps:
            raise TrainingError(_too_many(self.bad_steps, self.at_step))


def _too_many(count: int, step: int | None) -> str:
    at = f" (step {step})" if step is not None else ""
    return (
        f"The loss was NaN/inf for {count} updates in a row{at}. Try a lower optimizer.lr, trainer.clip_grad=1.0, "
        "trainer.precision=fp32, or check the data for bad values."
    )


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value
