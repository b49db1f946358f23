"""GPU paths: fp16 with GradScaler, bf16, channels_last and torch.compile (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import visionkit
from tests.conftest import TINY_CLS, merged
from visionkit.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("precision", ["fp16-mixed", "bf16-mixed", "auto"])
def test_mixed_precision_on_cuda(tmp_path: Path, precision: str) -> None:
    result = visionkit.train(
        None,
        [
            *TINY_CLS,
            "trainer.device=cuda",
            f"trainer.precision={precision}",
            "trainer.max_steps=20",
            "trainer.clip_grad=1.0",
        ],
        task="cls",
        work_dir=tmp_path,
    )
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 20
    if precision == "fp16-mixed":
        assert ckpt["scaler"]["scale"] > 0  # the scaler ran and kept a finite scale
    assert result.summary["precision"] == (
        "bf16-mixed"
        if precision == "auto" and torch.cuda.is_bf16_supported()
        else precision
        if precision != "auto"
        else "fp16-mixed"
    )


def test_channels_last_and_compile_on_cuda(tmp_path: Path) -> None:
    result = visionkit.train(
        None,
        merged(
            *TINY_CLS, "trainer.device=cuda", "trainer.channels_last=true", "trainer.compile=true", "trainer.epochs=2"
        ),
        task="cls",
        work_dir=tmp_path,
    )
    assert result.metrics["val/top1"] > 0.5
