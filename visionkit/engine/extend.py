"""Extending a run on purpose: a resume that changes the number of updates keeps the learning rate continuous.

Rebuilding the schedule over the new horizon and jumping to the current step would change the learning rate
at once (a finished 20-epoch cosine run extended to 60 epochs jumps from 0 to 75% of its peak). Instead, the
learning rate goes from where it is to the new schedule's curve in a straight ramp no steeper than the
steepest step of the original schedule (its warm-up, or its decay), then follows that curve to the end.
The plan is recomputed from what the checkpoint records, so a later resume lands on the same rates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim import lr_scheduler

from visionkit.engine.optim import build_scheduler


def lr_plan(spec: Mapping[str, Any], base_lrs: Sequence[float], horizon: int) -> list[list[float]]:
    """Per parameter group, the learning rate before each of `horizon` updates and after the last."""
    params = [torch.zeros(1, requires_grad=True) for _ in base_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": float(lr)} for p, lr in zip(params, base_lrs, strict=True)])
    sched = build_scheduler(spec, opt, horizon)
    plan = [[g["lr"]] for g in opt.param_groups]
    with warnings.catch_warnings():  # stepping a schedule without its optimizer is the point here
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(horizon):
            sched.step()
            for row, g in zip(plan, opt.param_groups, strict=True):
                row.append(g["lr"])
    return plan


def steepest(plan: Sequence[float]) -> float:
    """The largest change of the learning rate between two updates of a plan."""
    return max((abs(b - a) for a, b in zip(plan, plan[1:])), default=0.0)


def ramp_to(target: Sequence[float], start: int, current: float, limit: float) -> tuple[list[float], int]:
    """`target` from `start` on, reached from `current` by a straight ramp of at most `limit` per update;
    the whole plan (values before `start` are the target's) and the step where the ramp meets it."""
    end = len(target) - 1
    width = 0
    if limit > 0 and abs(target[start] - current) > limit:
        width = min(math.ceil(abs(target[start] - current) / limit), end - start)
        for _ in range(20):  # the meeting point moves with the ramp's width: settle it
            need = min(math.ceil(abs(target[start + width] - current) / limit), end - start)
            if need <= width:
                break
            width = need
    plan = list(target)
    for k in range(width + 1):
        plan[start + k] = current + (target[start + width] - current) * (k / width if width else 1.0)
    return plan, start + width


class PlannedLR(lr_scheduler.LRScheduler):
    """A schedule given as a learning rate per update and group (the last one holds past the end)."""

    def __init__(self, optimizer: torch.optim.Optimizer, plans: Sequence[Sequence[float]], step: int) -> None:
        self.plans = [list(p) for p in plans]
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, last_epoch=step - 1)

    def get_lr(self) -> list[float]:
        """The planned rates at the current update."""
        return [p[min(self.last_epoch, len(p) - 1)] for p in self.plans]

    def state_dict(self) -> dict[str, Any]:
        """The position only: the plan is rebuilt from the checkpoint's `continuation`."""
        return {"last_epoch": self.last_epoch, "_last_lr": self._last_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position and put its rates back on the optimizer (building the plan set the first ones)."""
        self.last_epoch, self._last_lr = state_dict["last_epoch"], state_dict["_last_lr"]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


def continued(
    spec: Mapping[str, Any], optimizer: torch.optim.Optimizer, record: Mapping[str, Any], horizon: int
) -> tuple[PlannedLR, str]:
    """The schedule of an extended run from its continuation record (origin horizon, step, rates then, base
    rates) and the new horizon; with a sentence saying what it does."""
    base, now, step = record["base_lrs"], record["lrs"], int(record["step"])
    original = lr_plan(spec, base, int(record["origin_horizon"]))
    target = lr_plan(spec, base, horizon)
    plans, meets = [], step
    for group, current in enumerate(now):
        limit = steepest(original[group])
        plan, meet = ramp_to(target[group], min(step, horizon), float(current), limit)
        plans.append(plan)
        meets = max(meets, meet)
    name = (spec.get("name") or "constant") if isinstance(spec, Mapping) else "constant"
    how = (
        f"the {name} schedule now spans {horizon} updates (it spanned {record['origin_horizon']}); the learning "
        f"rate goes on from {float(now[0]):.3g} at update {step}"
        + (f" and ramps to the new curve by update {meets}" if meets > step else " on the new curve")
        + f", never changing faster than the original schedule did ({steepest(original[0]):.3g} per update)"
    )
    return PlannedLR(optimizer, plans, step), how


def restore_schedules(
    spec: Mapping[str, Any], optimizers: Mapping[str, torch.optim.Optimizer], schedulers: dict[str, Any],
    ckpt: Mapping[str, Any], horizon: int,
) -> tuple[dict[str, Any] | None, list[str]]:  # fmt: skip
    """Put each schedule where the checkpoint left it (optimizers already restored); when the horizon changed,
    replace it by a continuation. Returns the continuation record (None for a run never extended) and notes."""
    record = ckpt.get("continuation")
    if ckpt["horizon"] != horizon:
        record = {
            n: {"origin_horizon": (record or {}).get(n, {}).get("origin_horizon", ckpt["horizon"]),
                "step": ckpt["step"], "lrs": [g["lr"] for g in o.param_groups],
                "base_lrs": [g.get("max_lr", g.get("initial_lr", g["lr"])) for g in o.param_groups]}
            for n, o in optimizers.items()
        }  # fmt: skip
    notes = []
    for name, opt in optimizers.items():
        if record:
            schedulers[name], how = continued(spec, opt, record[name], horizon)
            if ckpt["horizon"] != horizon:
                notes.append(how)
        if ckpt["horizon"] == horizon:
            schedulers[name].load_state_dict(ckpt["schedulers"][name])
    return record, notes
