"""No hidden global state: threads, matplotlib's backend and a caller's process group are left alone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import matplotlib
import torch
import torch.distributed as dist

import visionkit
from tests.engine.toy_task import register

FAST = ["data.batch_size=16", "data.num_workers=0", "trainer.epochs=1", "trainer.progress=false"]


def test_loading_for_inference_leaves_threads_alone(tmp_path: Path) -> None:
    register()
    before = torch.get_num_threads()
    run = visionkit.train({"task": "toy"}, FAST, work_dir=tmp_path / "r")
    torch.set_num_threads(before)
    ckpt = run.best_checkpoint
    wanted = 1 if before != 1 else 2
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["trainer"]["num_threads"] = wanted  # a run that trained with another thread count
    torch.save(saved, tmp_path / "threads.pt")
    visionkit.load_model(tmp_path / "threads.pt")
    visionkit.evaluate(tmp_path / "threads.pt")
    assert torch.get_num_threads() == before


def test_curves_leave_the_matplotlib_backend_alone(tmp_path: Path) -> None:
    register()
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice, which drawing the run's curves must not switch
    try:
        run = visionkit.train({"task": "toy"}, FAST, work_dir=tmp_path / "r")
        assert (run.run_dir / "curves.png").is_file()
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_fit_leaves_a_callers_process_group_open(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    register()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        visionkit.train({"task": "toy"}, FAST, work_dir=tmp_path / "r")
        assert dist.is_initialized()  # the caller opened it, so the caller closes it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_importing_visionkit_and_its_tasks_goes_nowhere_on_the_network() -> None:
    import subprocess
    import sys

    code = (
        "import socket\n"
        "def refuse(self, address): raise SystemExit(f'network access to {address}')\n"
        "socket.socket.connect = refuse\n"
        "import visionkit\n"
        "from visionkit.registry import TASKS\n"
        "TASKS.names()\n"  # loads every built-in task and plugin (albumentations included)
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
