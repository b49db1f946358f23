"""LR finder: a suggestion near the digits config's tuned lr, its files, and nothing else touched."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from tests.conftest import ROOT, TINY_CLS, run_tool
from visionkit import load_config
from visionkit.engine.trainer import Trainer
from visionkit.errors import ConfigError
from visionkit.tune.lr_finder import find_lr, lr_range_test, suggest_lr, zero_phase

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tune_lr_on_digits_suggests_near_the_default_lr_and_leaves_no_run(tmp_path):
    """`tools/tune.py lr` on the digits default config: within 10x of its optimizer.lr; only the two files."""
    default_lr = yaml.safe_load((ROOT / "configs/cls/default.yaml").read_text())["optimizer"]["lr"]
    out = tmp_path / "lr"
    proc = run_tool("tune", "lr", "cls/default.yaml", "--out", str(out), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "suggested lr:" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr"]  # no runs/ folder, nothing else
    found = json.loads((out / "lr_find.json").read_text())
    assert found["config_lr"] == default_lr
    assert default_lr / 10 <= found["suggestion"] <= default_lr * 10, found["suggestion"]
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lrs = found["lrs"]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert len(found["smoothed"]) <= len(lrs) == len(found["losses"])


def test_range_test_restores_model_optimizer_and_rng(tmp_path, monkeypatch):
    """The trainer's model, optimizer state and RNG are exactly as before the test; no run folder."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, TINY_CLS + ["optimizer.name=sgd", "optimizer.momentum=0.9"], task="cls")
    trainer = Trainer(cfg, write=False)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    opt = trainer.optimizers["main"]
    lr_before = [g["lr"] for g in opt.param_groups]
    rng_before = torch.get_rng_state()
    result = lr_range_test(trainer, min_lr=1e-4, max_lr=1.0, steps=12)
    assert len(result.lrs) == 12 and result.lrs[-1] == pytest.approx(1.0)
    after = trainer.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert [g["lr"] for g in opt.param_groups] == lr_before and not opt.state  # no momentum left behind
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not any(tmp_path.iterdir())


def test_divergence_stops_early_and_suggestion_is_below_it(tmp_path, monkeypatch):
    """A ramp to an absurd lr diverges: the test stops before --max-lr and the suggestion lies below."""
    monkeypatch.chdir(tmp_path)
    result, out = find_lr(None, TINY_CLS, task="cls", out_dir="lr", min_lr=1e-3, max_lr=1e6, steps=40)
    assert result.lrs[-1] < 1e6 and ("passed" in result.stop_reason or "not finite" in result.stop_reason)
    assert result.suggestion is not None and result.suggestion < result.lrs[-1]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["lr", "lr_find.json", "lr_find.png"]


def test_suggestion_rule_on_a_known_curve():
    """Steepest descent of a logistic drop in log10(lr) is at its midpoint; no drop -> a tenth of the minimum."""
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    losses = [2 - 1 / (1 + math.exp(-4 * (math.log10(lr) + 3))) for lr in lrs]  # midpoint at lr 1e-3
    suggestion, rule = suggest_lr(lrs, zero_phase(losses, 0.9))
    assert suggestion == pytest.approx(1e-3, rel=0.2) and "steepest" in rule
    rising = [1 + i / 100 for i in range(100)]
    suggestion, rule = suggest_lr(lrs, rising)
    assert suggestion == pytest.approx(lrs[0] / 10) and "tenth" in rule


def test_several_optimizers_are_refused(tmp_path):
    """A GAN trains two optimizers: a clear ConfigError, and no output."""
    with pytest.raises(ConfigError, match="2 optimizers"):
        find_lr(None, ["model.name=dcgan", "data.num_workers=0"], task="gen", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_range_exits_2(tmp_path):
    """--min-lr above --max-lr: exit 2 with the two values."""
    from visionkit.cli.tune import tune_main

    assert tune_main(["lr", "--task", "cls", *TINY_CLS, "--min-lr", "1", "--max-lr", "0.1"]) == 2


def test_an_even_descent_up_to_divergence_suggests_a_decade_below_the_minimum():
    lrs = [10 ** (-7 + 7 * i / 89) for i in range(90)]
    # down ever more steeply until the test stopped (divergence): the steepest point is the last one
    losses = [2.3 - 0.01 * (math.log10(lr) + 7) ** 2 for lr in lrs]
    suggestion, rule = suggest_lr(lrs, zero_phase(losses, 0.9))
    assert suggestion == pytest.approx(lrs[-1] / 10) and "a tenth" in rule
