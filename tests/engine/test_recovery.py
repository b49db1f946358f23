"""Crash recovery: kill -9 at several moments (one mid-save), Ctrl-C and SIGTERM, then --resume auto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, merged, run_tool
from visionkit import plugins
from visionkit.cli import train_main
from visionkit.engine.checkpoint import load_checkpoint

# About 180 training images in batches of 16: 12 updates per epoch, 3 epochs, a checkpoint every 4 updates.
CFG = [
    "--task=cls",
    "model.width=8",
    "model.depth=2",
    "data.image_size=8",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.train.val_fraction=0.9",
    "data.train_transforms=[]",
    "trainer.epochs=3",
    "trainer.log_every=2",
    "trainer.checkpoint_every=4",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "callbacks=[killer]",
]
ENV = {"PYTHONPATH": f"{ROOT / 'tests' / 'engine'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
TIMING = ("images_per_s",)


def _train(run: Path, kill: str = "", resume: bool = False) -> int:
    """Train through the command line: in a subprocess for kill -9, else in this process (faster)."""
    args = [*CFG, "--plugin=vk_killer", f"--work-dir={run}"] + (["--resume=auto"] if resume else [])
    if kill.startswith(("batch", "validation", "save")):
        return run_tool("train", *args, env={**ENV, "VK_KILL": kill}, timeout=300).returncode
    os.environ["VK_KILL"] = kill
    try:
        return train_main(args)
    finally:
        del os.environ["VK_KILL"]


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module", autouse=True)
def killer_plugin() -> Iterator[None]:
    """The killer callback importable here and in subprocesses; the registry is put back afterwards."""
    saved = plugins.snapshot()
    sys.path.insert(0, str(ROOT / "tests" / "engine"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    sys.path.remove(str(ROOT / "tests" / "engine"))
    sys.modules.pop("vk_killer", None)
    plugins.restore(saved)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the same config."""
    run = tmp_path_factory.mktemp("recovery") / "reference"
    assert _train(run) == 0
    return run


def test_kill_chain_ends_bit_equal_to_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(run, "batch:10") == -signal.SIGKILL  # mid-epoch, between checkpoints (last.pt at step 8)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    assert _train(run, "validation:1", resume=True) == -signal.SIGKILL  # after validation, before its save
    assert not (run / "checkpoints" / "best.pt").exists()
    assert _train(run, "save:2", resume=True) == -signal.SIGKILL  # half-way through writing last.pt
    assert list((run / "checkpoints").glob("*.tmp")), "the kill mid-save should leave its temporary behind"
    assert _train(run, "sigint:20", resume=True) == 130  # Ctrl-C: a checkpoint at this batch, then exit
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 20
    assert _train(run, resume=True) == 0

    a = load_checkpoint(reference / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 36
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"{key} differs from the uninterrupted run"
    assert (run / "checkpoints" / "best.pt").is_file()
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert _records(run) == _records(reference)  # each step once, with the same losses and metrics
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 36
    assert summary["wall_time_s"] > summary["wall_time_this_process_s"]  # the earlier processes count too


def test_sigterm_saves_at_the_batch_and_exits_143(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(run, "sigterm:3") == 128 + signal.SIGTERM
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ckpt["step"], ckpt["batch_in_epoch"]) == (3, 3)  # mid-epoch, not at a checkpoint_every step
    assert [r["step"] for r in _records(run)] == [2]


def test_sigterm_to_the_process_group_with_loader_workers_still_saves(tmp_path: Path) -> None:
    """The DataLoader workers get the signal too; they leave it to the run, which saves and shuts them down."""
    run = tmp_path / "run"
    args = [*merged(*CFG, "data.num_workers=2"), "--plugin=vk_killer", f"--work-dir={run}"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), *args],
        env={**os.environ, **ENV, "VK_KILL": "sigterm-group:3"},
        capture_output=True, text=True, timeout=300, start_new_session=True,  # its own process group
    )  # fmt: skip
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "exited unexpectedly" not in proc.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3


def test_a_second_signal_stops_at_once_without_saving(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(run, "sigint2:3") == 130
    assert not (run / "checkpoints" / "last.pt").exists()
