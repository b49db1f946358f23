"""The one optimizer update: accumulation, skips, and both ways of catching a non-finite loss."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from torch import nn

from visionkit import OptimizerGroup, StepContext, Task
from visionkit.engine.update import TrainingError, Updater, finite_check_for


class LinearTask(Task):
    """Least squares on a linear model; a batch whose target is NaN gives a NaN loss."""

    name = "vk_linear_update"

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": ((ctx.model(x) - y) ** 2).mean()}


def _updater(finite_check: str, optimizer: str = "sgd", **kwargs: Any) -> tuple[Updater, nn.Module, list[str]]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1) if optimizer == "sgd" else torch.optim.Adam(params, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    said: list[str] = []
    updater = Updater(
        LinearTask({}), {"main": OptimizerGroup(params)}, {"main": opt}, {"main": sched},
        torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext, torch.device("cpu"),
        finite_check=finite_check, warn=said.append, **kwargs,
    )  # fmt: skip
    return updater, model, said


def _batch(bad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(12.0).reshape(4, 3) / 10
    y = torch.full((4, 1), float("nan")) if bad else x.sum(1, keepdim=True)
    return x, y


def _ctx(model: nn.Module, step: int = 0) -> StepContext:
    return StepContext(model, model, torch.device("cpu"), step=step)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_auto_is_exact_on_the_cpu_and_deferred_elsewhere() -> None:
    assert finite_check_for("auto", torch.device("cpu")) == "update"
    assert finite_check_for("auto", torch.device("cuda", 0)) == "log"
    assert finite_check_for("log", torch.device("cpu")) == "log"


def test_exact_skip_leaves_weights_state_and_schedule() -> None:
    updater, model, said = _updater("update", "adam")
    assert updater.train_batch(_batch(), _ctx(model), ends_update=True)
    before, state = _weights(model), {k: v["exp_avg"].clone() for k, v in updater.optimizers["main"].state.items()}
    lr = updater.optimizers["main"].param_groups[0]["lr"]
    assert not updater.train_batch(_batch(bad=True), _ctx(model, 1), ends_update=True)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))
    assert all(torch.equal(state[k], v["exp_avg"]) for k, v in updater.optimizers["main"].state.items())
    assert updater.optimizers["main"].param_groups[0]["lr"] == lr  # the schedule did not step
    assert said == ["warning: non-finite loss at step 1; update skipped (1 in a row)"]


def test_log_mode_never_lets_nan_into_the_weights_and_reports_at_the_check() -> None:
    updater, model, said = _updater("log", "sgd", max_bad_steps=3)
    before = _weights(model)
    assert updater.train_batch(_batch(bad=True), _ctx(model), ends_update=True)  # counted: no host read
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))  # zeroed gradients: plain SGD stays put
    assert updater.train_batch(_batch(), _ctx(model, 1), ends_update=True)
    assert all(torch.isfinite(w).all() for w in _weights(model))
    assert said == []
    updater.check(step=2)
    assert said == ["warning: non-finite loss in 1 update(s) before step 2; their gradients were zeroed"]
    for step in range(2, 5):  # three in a row: the next check stops the run
        updater.train_batch(_batch(bad=True), _ctx(model, step), ends_update=True)
    with pytest.raises(TrainingError, match="NaN/inf for 3 updates in a row"):
        updater.check(step=5)
    assert all(torch.isfinite(w).all() for w in _weights(model))


def test_adam_in_log_mode_stays_finite() -> None:
    updater, model, _ = _updater("log", "adam", max_bad_steps=None)
    for step, bad in enumerate([False, True, False, True, True, False]):
        updater.train_batch(_batch(bad), _ctx(model, step), ends_update=True)
    assert all(torch.isfinite(w).all() for w in _weights(model))


def test_both_modes_train_alike_on_finite_losses_and_accumulate() -> None:
    results = []
    for mode in ("update", "log"):
        updater, model, _ = _updater(mode, "adam", accumulate=2)
        stepped = [updater.train_batch(_batch(), _ctx(model, i // 2), ends_update=i % 2 == 1) for i in range(6)]
        assert stepped == [False, True] * 3
        assert float(updater.take_losses()["loss"]) > 0 and updater.take_losses() == {}
        results.append(_weights(model))
    assert all(torch.equal(a, b) for a, b in zip(*results))
