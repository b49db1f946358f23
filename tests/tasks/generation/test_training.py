"""GAN and diffusion on the shared trainer: optimizer alternation and isolation, bf16 autocast, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import visionkit
from tests.conftest import merged
from tests.tasks.generation.test_end_to_end import DCGAN, TINY_GAN, TINY_GEN
from visionkit import StepContext
from visionkit.config import read_yaml
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.tasks.generation.gan_task import GANTask


class Spy:
    """Wraps GANTask.training_step, recording what each training step sees."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.initial: dict[str, torch.Tensor] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Patch the task class for this test only (monkeypatch undoes it)."""
        original = GANTask.training_step
        spy = self

        def training_step(task: GANTask, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
            nets = {"g": list(ctx.module.generator.parameters()), "d": list(ctx.module.discriminator.parameters())}
            if not spy.initial:
                spy.initial = {k: v.detach().clone() for k, v in ctx.module.named_parameters()}
            spy.calls.append(
                {
                    "optimizer": ctx.optimizer,
                    **{f"{k}_trainable": {p.requires_grad for p in ps} for k, ps in nets.items()},
                    **{f"{k}_has_grad": {p.grad is not None for p in ps} for k, ps in nets.items()},
                }
            )
            return original(task, batch, ctx)

        monkeypatch.setattr(GANTask, "training_step", training_step)


def _spy_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *overrides: str) -> tuple[Spy, dict[str, torch.Tensor]]:
    spy = Spy()
    spy.install(monkeypatch)
    cfg = {**read_yaml(DCGAN), "optimizer": {"name": "sgd", "lr": 0.1}}  # plain SGD: lr 0 means frozen
    result = visionkit.train(cfg, [*TINY_GAN, "trainer.ema=null", *overrides], work_dir=tmp_path)
    return spy, load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["model"]


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> list[bool]:
    return [not torch.equal(v, after[k]) for k, v in before.items() if k.startswith(prefix)]


def test_gan_steps_alternate_and_each_optimizer_trains_only_its_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, final = _spy_run(monkeypatch, tmp_path / "frozen_g", "generation.lr_generator=0.0")
    calls = spy.calls
    assert [c["optimizer"] for c in calls] == ["discriminator", "generator"] * 3
    for c in calls:
        trains_d = c["optimizer"] == "discriminator"
        assert c["d_trainable"] == {trains_d} and c["g_trainable"] == {not trains_d}
        assert c["g_has_grad"] == {False}  # the discriminator step leaves no gradient on the generator
        assert c["d_has_grad"] == {False}  # D stepped (and cleared its gradients) before the G step ran
    # generator lr 0: the discriminator optimizer changed every D weight and no G weight
    assert all(_changed(spy.initial, final, "discriminator."))
    assert not any(_changed(spy.initial, final, "generator."))
    spy, final = _spy_run(monkeypatch, tmp_path / "frozen_d", "generation.lr_discriminator=0.0")
    assert not any(_changed(spy.initial, final, "discriminator."))
    assert any(_changed(spy.initial, final, "generator.")) and all(_changed(spy.initial, final, "generator.project.0"))


def _losses(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [v for r in records for k, v in r.items() if k.startswith(("train/", "val/"))]


def test_bf16_autocast_on_cpu_for_gan_with_r1_and_diffusion(tmp_path: Path) -> None:
    bf16 = ["trainer.precision=bf16-mixed", "trainer.device=cpu", "trainer.max_steps=2"]
    gan = visionkit.train(DCGAN, merged(*TINY_GAN, *bf16, "loss.r1_gamma=1.0"), work_dir=tmp_path / "gan")
    diffusion = visionkit.train(
        None,
        merged(*TINY_GEN, *bf16, "model.conditional=true", "generation.guidance=1.5"),
        task="gen",
        work_dir=tmp_path / "ddpm",
    )
    for result in (gan, diffusion):
        summary = json.loads((result.run_dir / "summary.json").read_text())
        assert summary["precision"] == "bf16-mixed" and summary["steps"] == 2
        values = _losses(result.run_dir)
        assert values and all(math.isfinite(v) for v in values)
        weights = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["model"]
        assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    assert "train/r1" in json.loads((gan.run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_resumed_gan_run_restores_both_optimizers_and_ema(tmp_path: Path) -> None:
    cfg = merged(*TINY_GAN, "trainer.ema=0.9", "trainer.max_steps=4", "trainer.val_every=1")
    full = visionkit.train(DCGAN, cfg, work_dir=tmp_path / "full")
    visionkit.train(DCGAN, merged(*cfg, "trainer.max_steps=2"), work_dir=tmp_path / "half")
    mid = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")
    assert mid["step"] == 2 and set(mid["optimizers"]) == {"discriminator", "generator"}
    visionkit.train(None, ["trainer.max_steps=4"], resume="auto", work_dir=tmp_path / "half")
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y, strict=True))
        return x == y

    for key in ("model", "ema"):
        assert same(a[key], b[key]), key
    for name in ("discriminator", "generator"):
        assert same(a["optimizers"][name], b["optimizers"][name]), name
        assert a["optimizers"][name]["state"], name  # Adam moments exist, so the comparison means something
    assert not same(a["ema"]["module.generator.project.0.weight"], a["model"]["generator.project.0.weight"])
