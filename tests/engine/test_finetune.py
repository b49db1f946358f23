"""Freezing (`model.freeze`, `trainer.unfreeze_at`), layer-wise param groups and the no-decay default."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import visionkit
from tests.conftest import TINY_CLS, merged
from visionkit import Callback, LoopState
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.optim import build_optimizer, build_scheduler, fast_forward_scheduler
from visionkit.engine.trainer import Trainer
from visionkit.errors import ConfigError

# small_cnn width 8, depth 2 on 1-channel digits: features.{0,4} convs (no bias), features.{1,5} BatchNorms,
# head.2 linear. About 180 training images: 6 batches (updates) per epoch.
SMALL = merged(*TINY_CLS, "data.train.val_fraction=0.9", "trainer.log_every=1", "trainer.progress=false")
FROZEN_LINE = "frozen 6 tensors (1.3K parameters) matching ['features']"


class Probe(Callback):
    """Records the model's state at fit start and at each epoch start, and every group lr after each update."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.lrs: list[list[float]] = []

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.trainer.module.state_dict().items()}

    def on_fit_start(self, state: LoopState) -> None:
        self.states["start"] = self._snapshot()

    def on_epoch_start(self, state: LoopState) -> None:
        self.states[f"epoch{state.epoch}"] = self._snapshot()

    def on_batch_end(self, state: LoopState) -> None:
        if state.updated and "main" in self.trainer.optimizers:
            self.lrs.append([g["lr"] for g in self.trainer.optimizers["main"].param_groups])


def _fit(tmp_path: Path, overrides: list[str], name: str = "run", config: Any = None) -> tuple[Trainer, Probe]:
    cfg = visionkit.load_config(config, overrides, task=None if config else "cls")
    cfg["work_dir"] = str(tmp_path / name)
    probe = Probe()
    probe.trainer = trainer = Trainer(cfg, callbacks=[probe])
    trainer.fit()
    return trainer, probe


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> dict[str, bool]:
    return {k: torch.equal(v, b[k]) for k, v in a.items() if k.startswith(prefix)}


def test_freeze_keeps_weights_and_batchnorm_statistics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Heavy weight decay on every tensor: a frozen tensor sits in the optimizer and must still not move.
    cfg = merged(*SMALL, "model.freeze=[features]", "optimizer.weight_decay=0.5", "optimizer.decay_norm_and_bias=true")
    trainer, probe = _fit(tmp_path, [*cfg, "trainer.max_steps=4"])
    assert FROZEN_LINE + "; 2 BatchNorm layers kept in eval mode" in capsys.readouterr().out
    after = trainer.module.state_dict()
    frozen = _same(probe.states["start"], after, "features.")
    assert len(frozen) == 12 and all(frozen.values()), frozen  # BN: running_mean/var, num_batches_tracked too
    assert not any(_same(probe.states["start"], after, "head.").values())
    assert not any(p.requires_grad for p in trainer.module.features.parameters())


def test_sgd_and_adamw_skip_parameters_without_gradients() -> None:
    for spec in ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.5}, {"name": "adamw", "lr": 0.1}):
        model = nn.Linear(3, 2)
        model.bias.requires_grad_(False)
        opt = build_optimizer({**spec, "decay_norm_and_bias": True}, model.parameters())
        bias = model.bias.detach().clone()
        for _ in range(3):
            model(torch.ones(1, 3)).sum().backward()
            opt.step()
        assert torch.equal(model.bias, bias) and model.bias not in opt.state


def test_unfreeze_at_trains_from_that_epoch_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = merged(*SMALL, "model.freeze=[features.*]", "trainer.unfreeze_at=2", "trainer.epochs=3")
    cfg += ["optimizer.param_groups=[{params: head.*, lr_scale: 0.5}]", "scheduler.warmup_steps=3"]
    full, probe = _fit(tmp_path, cfg, "full")
    s = probe.states
    assert all(_same(s["start"], s["epoch2"], "features.").values())  # frozen for epochs 0 and 1
    assert not any(_same(s["epoch2"], full.module.state_dict(), "features.").values())  # trained in epoch 2
    assert len(probe.lrs) == 18  # groups: features decay/no-decay, then head decay/no-decay at half the lr
    assert all(math.isclose(lrs[2], lrs[0] * 0.5, rel_tol=1e-12) for lrs in probe.lrs)
    # Stop inside epoch 1 (frozen), resume to the epoch boundary (step 12), then on past unfreeze_at.
    _fit(tmp_path, [*cfg, "trainer.max_steps=8"], "half")
    for steps in (12, 18):
        resumed = visionkit.train(None, [f"trainer.max_steps={steps}"], resume=tmp_path / "half")
        assert resumed.summary["steps"] == steps and resumed.summary["epochs"] == steps // 6
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"model.{key} differs after resume"
    a, b = a["optimizers"]["main"], b["optimizers"]["main"]
    assert a["param_groups"] == b["param_groups"] and len(a["state"]) == 8  # every tensor has Adam state now
    for index, values in a["state"].items():
        for name, value in values.items():
            assert torch.equal(value, b["state"][index][name]), f"optimizer state {index}.{name} differs"


def _named(model: nn.Module) -> tuple[list[nn.Parameter], dict[nn.Parameter, str]]:
    return list(model.parameters()), {p: n for n, p in model.named_parameters()}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=True))
        self.norm = nn.LayerNorm(4)
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 2)


def _groups(opt: torch.optim.Optimizer, names: dict[nn.Parameter, str]) -> list[tuple[list[str], float, float]]:
    return [([names[p] for p in g["params"]], g["lr"], g["weight_decay"]) for g in opt.param_groups]


def test_no_weight_decay_on_biases_and_norms_by_default_and_the_switch() -> None:
    params, names = _named(Net())
    decayed = ["backbone.0.weight", "backbone.2.weight", "embed.weight", "head.weight"]
    plain = ["backbone.0.bias", "backbone.1.weight", "backbone.1.bias", "backbone.2.bias", "norm.weight", "norm.bias"]
    plain.append("head.bias")
    opt = build_optimizer({"name": "adamw", "lr": 0.1, "weight_decay": 0.05}, params, names)
    assert _groups(opt, names) == [(decayed, 0.1, 0.05), (plain, 0.1, 0.0)]
    opt = build_optimizer({"name": "adamw", "lr": 0.1}, params, names)  # AdamW's own default decay (0.01)
    assert [g[2] for g in _groups(opt, names)] == [0.01, 0.0]
    switched = build_optimizer({"name": "sgd", "lr": 0.1, "weight_decay": 0.05, "decay_norm_and_bias": True}, params)
    assert len(switched.param_groups) == 1 and switched.param_groups[0]["weight_decay"] == 0.05
    assert len(build_optimizer({"name": "adam", "lr": 0.1}, params, names).param_groups) == 1  # no decay: one group
    # A param_groups entry with its own weight_decay is taken as written; others keep the no-decay rule.
    spec = {"name": "sgd", "lr": 0.1, "weight_decay": 0.05}
    entries = [{"params": "backbone", "lr_scale": 0.1, "weight_decay": 0.2}, {"params": ["head.*"], "momentum": 0.5}]
    opt = build_optimizer({**spec, "param_groups": entries}, params, names)
    backbone = [n for n in names.values() if n.startswith("backbone")]
    assert _groups(opt, names) == [
        (["embed.weight"], 0.1, 0.05),
        (["norm.weight", "norm.bias"], 0.1, 0.0),
        (backbone, pytest.approx(0.01), 0.2),
        (["head.weight"], 0.1, 0.05),
        (["head.bias"], 0.1, 0.0),
    ]
    assert opt.param_groups[-1]["momentum"] == 0.5 and opt.param_groups[0]["momentum"] == 0


@pytest.mark.parametrize(
    "scheduler",
    [{"name": "cosine", "warmup_steps": 4}, {"name": "onecycle"}, {"name": "step", "warmup_steps": 2}],
)
def test_lr_scale_holds_at_every_step_of_the_schedule(scheduler: dict[str, Any]) -> None:
    def build() -> tuple[torch.optim.Optimizer, Any]:
        model = Net()
        spec = {"name": "adamw", "lr": 0.2, "param_groups": [{"params": "backbone.*", "lr_scale": 0.1}]}
        opt = build_optimizer(spec, *_named(model))
        return opt, build_scheduler(scheduler, opt, 20)

    opt, sched = build()
    assert len(opt.param_groups) == 4  # default decay/no-decay, then backbone decay/no-decay
    seen = []
    for _ in range(12):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] == lrs[1] and lrs[2] == lrs[3] and math.isclose(lrs[2], lrs[0] * 0.1, rel_tol=1e-9), lrs
        seen.append(lrs[0])
        opt.step()
        sched.step()
    assert len(set(seen)) > 3  # the schedule moved
    # A resume with a new horizon rebuilds and fast-forwards the schedule from each group's own start.
    other, _ = build()
    other.load_state_dict(opt.state_dict())
    fast_forward_scheduler(scheduler, other, 20, 12)
    assert [g["lr"] for g in other.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups], rel=1e-9)


def test_freeze_holds_for_gan_optimizers_that_toggle_requires_grad(tmp_path: Path) -> None:
    from tests.tasks.generation.test_end_to_end import DCGAN, TINY_GAN

    trainer, probe = _fit(tmp_path, [*TINY_GAN, "model.freeze=[discriminator.body.0]"], config=DCGAN)
    same = _same(probe.states["start"], trainer.module.state_dict(), "discriminator.")
    assert same.pop("discriminator.body.0.weight") and same.pop("discriminator.body.0.bias")
    assert not any(same.values())  # the rest of the discriminator trained


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["optimizer.param_groups=[{params: head.*, lr_scal: 0.1}]"],
            r"optimizer\.param_groups\[0\]\.lr_scal.*lr_scale",
        ),
        (["optimizer.param_groups=[{lr_scale: 0.1}]"], r"optimizer\.param_groups\[0\]\.params"),
        (
            ["optimizer.param_groups=[{params: a}, {params: b, lr_scale: -1}]"],
            r"optimizer\.param_groups\[1\]\.lr_scale",
        ),
        (["optimizer.param_groups=[{params: head.*, betas: 3}]"], r"optimizer\.param_groups\[0\]\.betas"),
        (["optimizer.param_groups=[{params: head.*, lr: 0.1, lr_scale: 2}]"], r"both lr and lr_scale"),
        (["optimizer.param_groups=head"], r"optimizer\.param_groups must be a list"),
        (["optimizer.decay_norm_and_bias=maybe"], r"optimizer\.decay_norm_and_bias"),
        (["model.freeze=3"], r"model\.freeze must be a list"),
        (["trainer.unfreeze_at=2"], r"trainer\.unfreeze_at is 2 but model\.freeze is empty"),
        (["model.freeze=[features]", "trainer.unfreeze_at=0"], r"trainer\.unfreeze_at must be a positive"),
    ],
)
def test_bad_specs_fail_when_the_config_loads(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        visionkit.load_config(None, overrides, task="cls")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.freeze=[featurs]", r"model\.freeze pattern 'featurs' matches no parameter.*Did you mean 'features'"),
        ("optimizer.param_groups=[{params: [heads.*]}]", r"optimizer\.param_groups\[0\]\.params .*matches no param"),
        ("model.freeze=['*']", r"freezes every trainable parameter"),
    ],
)
def test_patterns_that_match_badly_fail_before_training(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        visionkit.train(None, merged(*SMALL, override), task="cls", work_dir=tmp_path)


def test_a_run_saved_before_the_no_decay_default_resumes_as_it_was(tmp_path: Path) -> None:
    # Such a run had one parameter group with weight decay on everything and no decay_norm_and_bias key.
    over = merged(*SMALL, "optimizer.weight_decay=0.05", "optimizer.decay_norm_and_bias=true", "trainer.max_steps=2")
    visionkit.train(None, over, task="cls", work_dir=tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    del ckpt["config"]["optimizer"]["decay_norm_and_bias"]
    assert len(ckpt["optimizers"]["main"]["param_groups"]) == 1
    torch.save(ckpt, last)
    result = visionkit.train(None, ["trainer.max_steps=4"], work_dir=tmp_path / "run", resume="auto")
    assert result.summary["steps"] == 4
