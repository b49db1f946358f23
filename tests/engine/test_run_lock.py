"""One run writes a run folder at a time: an OS lock that a crash releases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_CLS, merged, run_tool
from visionkit.engine.report import RunLock
from visionkit.errors import ConfigError


def test_a_second_lock_on_a_folder_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    with pytest.raises(ConfigError, match=r"is in use by another run \(pid \d+ on .*another --work-dir"):
        RunLock(tmp_path)
    first.release()
    RunLock(tmp_path).release()


def test_a_killed_holder_leaves_the_folder_free(tmp_path: Path) -> None:
    code = "import pathlib, sys, time; from visionkit.engine.report import RunLock\n"
    code += f"lock = RunLock(pathlib.Path({str(tmp_path)!r})); print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
        RunLock(tmp_path)
    holder.kill()  # SIGKILL: the OS drops the lock with the process
    holder.wait(timeout=30)
    RunLock(tmp_path).release()


SLOW_START = """
import time
from visionkit import CALLBACKS, Callback

@CALLBACKS.register("vk_slow_start")
class SlowStart(Callback):
    def on_fit_start(self, state):  # holds the run until the test lets it go (at most two minutes)
        go, deadline = __import__("pathlib").Path(__import__("os").environ["VK_GO"]), time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
"""


def test_a_second_run_in_a_busy_work_dir_exits_2_and_the_first_finishes_intact(tmp_path: Path) -> None:
    (tmp_path / "vk_slow_start.py").write_text(SLOW_START)  # the first run holds the folder until told to go on
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "VK_GO": str(tmp_path / "go")}
    work = tmp_path / "run"
    args = ["--task", "cls", "--work-dir", str(work), *merged(*TINY_CLS, "trainer.epochs=3", "trainer.num_threads=1")]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "train.py"), "--plugin", "vk_slow_start", *args,
         "callbacks=[{name: vk_slow_start}]", "trainer.progress=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (work / "config.yaml").is_file():  # written once the first run holds the lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.1)
    second = run_tool("train", *args)
    assert first.poll() is None, "the first run ended before the second was refused"
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"The run folder '{work}' is in use by another run (pid {first.pid}" in second.stderr
    (tmp_path / "go").touch()
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one writer: no interleaved records
    assert json.loads((work / "summary.json").read_text())["epochs"] == 3
