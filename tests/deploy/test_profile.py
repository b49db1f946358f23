"""tools/profile.py: FLOPs and parameter counts against a hand count, the command line end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import run_tool
from visionkit.cli.deploy import profile_main
from visionkit.deploy.profile import Target, measure


class TinyNet(nn.Module):
    """Conv2d(1, 4, 3, padding=1) on 8x8, ReLU, Linear(4*8*8, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


# A multiply-add is 2 FLOPs; biases and ReLU are not counted by FlopCounterMode.
CONV_FLOPS = 2 * 4 * 1 * 9 * (8 * 8)  # 2 * out channels * in channels * kernel area * output pixels = 4,608
LINEAR_FLOPS = 2 * (4 * 8 * 8) * 10  # 2 * in features * out features = 5,120
CONV_PARAMS = 4 * 1 * 3 * 3 + 4  # 40
LINEAR_PARAMS = 256 * 10 + 10  # 2,570


def test_flops_and_params_match_a_hand_count() -> None:
    net = TinyNet()
    net.fc.requires_grad_(False)  # frozen: counted in the total, not in the trainable count
    result = measure(Target(net, (torch.randn(1, 1, 8, 8),)), batches=(1, 3), iters=2, compile=False, onnx=True)
    assert result["flops"] == CONV_FLOPS + LINEAR_FLOPS == 9728
    assert result["params"]["total"] == sum(p.numel() for p in net.parameters()) == CONV_PARAMS + LINEAR_PARAMS
    assert result["params"]["trainable"] == CONV_PARAMS
    rows = {(r["runtime"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {("eager", 1), ("eager", 3), ("onnxruntime", 1), ("onnxruntime", 3)}
    for row in rows.values():  # the ONNX file takes batch 3 too (dynamic batch axis)
        assert row["error"] is None and row["calls"] == 1
        assert 0 < row["p50_ms"] <= row["p95_ms"] and row["images_per_s"] > 0
    assert result["peak_memory_mb"] is None  # CPU


def test_fixed_batch_target_runs_one_image_per_call() -> None:
    net = TinyNet()
    result = measure(Target(net, (torch.randn(1, 1, 8, 8),), batched=False), (1, 4), iters=2, compile=False, onnx=False)
    assert result["flops"] == CONV_FLOPS + LINEAR_FLOPS
    assert [(r["batch"], r["calls"]) for r in result["rows"]] == [(1, 1), (4, 4)]
    assert any("one image per call" in n for n in result["notes"])


def test_compile_failure_is_a_row_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: nn.Module) -> object:
        def call(*inputs: torch.Tensor) -> None:
            raise RuntimeError("no C++ compiler here\nlong details")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    result = measure(Target(TinyNet(), (torch.randn(1, 1, 8, 8),)), (1,), iters=1, compile=True, onnx=False)
    eager, compiled = result["rows"]
    assert eager["error"] is None and eager["p50_ms"] > 0
    assert compiled["runtime"] == "compile" and compiled["p50_ms"] is None
    assert compiled["error"] == "RuntimeError: no C++ compiler here"


def test_profile_command_writes_profile_json(tmp_path: Path) -> None:
    out = tmp_path / "prof"
    args = ["--task", "cls", "--batch", "1,2", "--iters", "3", "--no-compile", "--device", "cpu"]
    proc = run_tool("profile", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "profile.json").read_text())
    for key in ("model", "task", "device", "torch", "threads", "cpu", "params", "flops", "rows"):
        assert key in record, key
    assert (record["model"], record["task"], record["device"]) == ("small_cnn", "classification", "cpu")
    assert record["flops"] > 0 and record["params"]["total"] == record["params"]["trainable"] > 0
    runtimes = {(r["runtime"], r["batch"]) for r in record["rows"] if r["error"] is None}
    assert {("eager", 1), ("eager", 2), ("onnxruntime", 1), ("onnxruntime", 2)} <= runtimes
    assert "onnxruntime" in proc.stdout and "images/s" in proc.stdout


@pytest.mark.parametrize("value", ["0", "1,x", ""])
def test_bad_batch_value_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        profile_main(["--task", "cls", "--batch", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--batch" in err and "positive integers" in err
