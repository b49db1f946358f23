"""benchmarks/gpu_check.py cannot rot: its --cpu mode runs every CPU-safe part, tiny, and reports finite figures."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from visionkit import plugins
from visionkit.registry import MODELS

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_cpu_mode_runs_every_cpu_safe_part_with_finite_figures(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--cpu",
        "--peak-tflops",
        "0.05",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "w"),
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["problems"] == [] and result["mode"] == "cpu"
    assert result["environment"]["torch"] == torch.__version__ and result["environment"]["peak_bf16_tflops"] == 0.05
    assert result["pytest_cuda"] == {"skipped": "--cpu: no GPU"}
    assert _finite(result["settings"]["flops_per_image"]) and result["settings"]["flops_per_image"] > 1e6

    resnet = result["resnet"]
    assert set(resnet) == {"hand_eager", "trainer_eager", "hand_compile", "trainer_compile"}
    for name, case in resnet.items():
        assert case["losses_finite"] is True, name
        for key in ("images_per_s", "vs_hand", "mfu_percent"):
            assert _finite(case[key]) and case[key] > 0, (name, key, case)
    for name in ("trainer_eager", "trainer_compile"):
        assert resnet[name]["steps"] == 3 and resnet[name]["skipped_updates"] == 0
        assert resnet[name]["precision"] == "fp32" and resnet[name]["process_group"]["initialized"] is False
    for name in ("hand_compile", "trainer_compile"):  # torch.compile really traced the model
        assert resnet[name]["graphs"] >= 1, resnet[name]
    # the ratio is the trainer's rate over the hand loop's of the same compile setting
    assert resnet["trainer_eager"]["vs_hand"] == pytest.approx(
        resnet["trainer_eager"]["images_per_s"] / resnet["hand_eager"]["images_per_s"]
    )
    mfu = resnet["hand_eager"]["images_per_s"] * result["settings"]["flops_per_image"] / 0.05e12 * 100
    assert resnet["hand_eager"]["mfu_percent"] == pytest.approx(mfu)

    assert set(result["tasks"]) == {"cls", "seg", "det", "gen"}
    for name, run in [*result["tasks"].items(), ("gan", result["gan_fp16"])]:
        assert "error" not in run, (name, run)
        assert run["steps"] == 3 and run["losses_finite"] is True and run["skipped_updates"] == 0, (name, run)
        assert _finite(run["images_per_s"]) and run["images_per_s"] > 0, (name, run)
    assert {run["precision"] for run in result["tasks"].values()} == {"fp32"}  # auto on a CPU
    gan = result["gan_fp16"]
    assert gan["precision"] == "fp16-mixed" and _finite(gan["grad_scale"]) and gan["grad_scale"] > 0
    assert {"train/discriminator/loss", "train/generator/loss"} <= set(gan["last_losses"])

    table = out.with_suffix(".md").read_text()
    assert "| visionkit trainer, compile |" in table and "| gen/dcgan.yaml, fp16-mixed | fp16-mixed | 3 |" in table
    assert table in done.stdout


@pytest.fixture
def restored_registries() -> Iterator[None]:
    """The registries and plugin lists as before the test (the check registers a dataset and a model)."""
    MODELS.names()
    saved = plugins.snapshot()
    yield
    plugins.restore(saved)


def test_torchrun_child_opens_a_group_so_the_trainer_runs_ddp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_registries: None, one_thread: None
) -> None:
    """What `torchrun --nproc_per_node=1` runs, in this process: gloo here, NCCL on a GPU."""
    from benchmarks import gpu_check, gpu_check_parts

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = gpu_check_parts.trainer_config(
        {"name": "small_cnn", "width": 8, "depth": 2}, device="cpu", batch=4, size=16, steps=3, log_every=1,
        precision="fp32", compile=False, workers=0, num_classes=10, work_dir=str(tmp_path / "run"),
    )  # fmt: skip
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": cfg, "out": str(tmp_path / "out.json"), "backend": "eager", "after": 1}))
    assert gpu_check.main(["--child", str(spec)]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["process_group"] == {"initialized": True, "backend": "gloo", "world_size": 1}
    # visionkit opens a group only for WORLD_SIZE > 1, so the check opened it to run DDP
    assert out["trainer_opens_group"] is False and out["group_opened_by_check"] is True
    assert out["steps"] == 3 and out["losses_finite"] is True and _finite(out["images_per_s"])
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script would run the whole check")
def test_without_a_gpu_and_without_cpu_flag_it_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import gpu_check

    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no CUDA GPU is visible") and "--cpu" in err
