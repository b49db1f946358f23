"""Extending a run on purpose: a resume with more epochs keeps the learning rate continuous (no step larger than
the original schedule's largest), says how, and resumes bit-exactly inside the extension (issue 21)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import visionkit
from tests.conftest import TINY_CLS, merged
from visionkit.engine.extend import PlannedLR, continued, lr_plan, steepest

COSINE = {"name": "cosine", "warmup_steps": 10}


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


@pytest.mark.parametrize("step", [100, 60])  # a finished run, and one stopped part-way
def test_the_continued_rate_never_jumps(step: int) -> None:
    original = lr_plan(COSINE, [0.1], 100)[0]
    record = {"origin_horizon": 100, "step": step, "lrs": [original[step]], "base_lrs": [0.1]}
    opt = _optimizer()
    sched, how = continued(COSINE, opt, record, 300)
    assert isinstance(sched, PlannedLR) and opt.param_groups[0]["lr"] == pytest.approx(original[step])
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(step, 300):
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    assert steepest(rates) <= steepest(original) + 1e-12  # continuous: never faster than the original schedule
    assert max(rates) > 0.5 * 0.1 and rates[-1] == pytest.approx(lr_plan(COSINE, [0.1], 300)[0][-1], abs=1e-9)
    assert "spans 300 updates (it spanned 100)" in how and f"at update {step}" in how
    # the old way (the schedule rebuilt over 300 updates at this step) jumps:
    assert abs(lr_plan(COSINE, [0.1], 300)[0][step] - original[step]) > 4 * steepest(original)


def _lrs(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in records if "lr" in r]


def test_extending_a_finished_cosine_run_is_continuous_and_resumes_exactly(tmp_path: Path, capsys) -> None:
    base = merged(*TINY_CLS, "trainer.log_every=1", "trainer.num_threads=1", f"scheduler={json.dumps(COSINE)}")
    first = tmp_path / "first"
    visionkit.train(None, base, task="cls", work_dir=first)
    original = _lrs(first)
    other = tmp_path / "other"
    shutil.copytree(first, other)
    capsys.readouterr()
    visionkit.train(None, ["trainer.epochs=3"], resume="auto", work_dir=first)
    assert "extending the run: the cosine schedule now spans" in capsys.readouterr().out
    extended = _lrs(first)
    assert len(extended) > len(original) and steepest(extended) <= steepest(original) + 1e-12
    # the same extension stopped part-way and resumed again lands on the same rates and weights
    visionkit.train(None, ["trainer.epochs=3", f"trainer.max_steps={len(original) + 20}"], resume="auto",
                    work_dir=other)  # fmt: skip
    visionkit.train(None, ["trainer.epochs=3", "trainer.max_steps=null"], resume="auto", work_dir=other)
    assert _lrs(other) == extended
    weights = [torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"] for run in (first, other)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
