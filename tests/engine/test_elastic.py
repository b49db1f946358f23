"""torchrun restarts: the restarted worker group resumes the run its launch started (issue 11)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_CLS
from visionkit.engine import distributed as dist
from visionkit.engine import elastic


def _torchrun_env(run_id: str = "none", agent: str = "/tmp/torchelastic_ab12/none_xy34", restart: int = 1) -> dict:
    return {
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": str(restart),
        "TORCHELASTIC_ERROR_FILE": f"{agent}/attempt_{restart}/0/error.json",
        "GROUP_WORLD_SIZE": "1",
        "RANK": "0",
    }


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_RESTART_COUNT", "GROUP_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _run_with_checkpoint(run_dir: Path) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(b"x")
    return last


def test_launch_identity_is_the_agents_log_folder_and_survives_restarts() -> None:
    assert elastic.launch_identity({}) is None  # not under torchrun
    first = elastic.launch_identity(_torchrun_env(restart=0))
    again = elastic.launch_identity(_torchrun_env(restart=1))
    assert first == again and first["agent"] == "/tmp/torchelastic_ab12/none_xy34"
    other = elastic.launch_identity(_torchrun_env(agent="/tmp/torchelastic_cd56/none_zz99"))
    assert not elastic.same_launch(first, other)  # another torchrun on the same host
    assert elastic.launch_identity({"TORCHELASTIC_RUN_ID": "x"})["agent"] == f"pid {os.getppid()}"  # no error file


def test_same_launch_across_nodes_needs_a_rendezvous_id() -> None:
    node_a = {**elastic.launch_identity(_torchrun_env(run_id="job7")), "nodes": 2}
    node_b = {**node_a, "host": "other-host", "agent": "/tmp/torchelastic_q/job7_w"}
    assert elastic.same_launch(node_a, node_b)  # rank 0 moved to another node after the restart
    assert not elastic.same_launch(node_a, {**node_b, "run_id": "job8"})
    anonymous = {**node_a, "run_id": "none"}
    assert not elastic.same_launch(anonymous, {**node_b, "run_id": "none"})  # no --rdzv-id: cannot tell


def test_restart_resumes_its_work_dir_and_a_new_launch_does_not(tmp_path, monkeypatch) -> None:
    work = tmp_path / "run"
    _set_env(monkeypatch, _torchrun_env(restart=0))
    work.mkdir()
    elastic.mark_run_dir(work)  # rank 0 of the first attempt, once the dir exists
    assert elastic.elastic_resume(None, str(work), "classification") == (None, work)  # nothing saved: start it again
    last = _run_with_checkpoint(work)
    _set_env(monkeypatch, _torchrun_env(restart=1))
    assert elastic.elastic_resume(None, str(work), "classification") == (last, None)
    best = work / "checkpoints" / "best.pt"  # the launch began with --resume .../best.pt: not back to it
    assert elastic.elastic_resume(best, None, "classification") == (last, None)
    assert elastic.elastic_resume("auto", str(work), "classification") == (last, None)
    elsewhere = tmp_path / "other" / "checkpoints" / "last.pt"  # a run this launch never wrote: as given
    assert elastic.elastic_resume(elsewhere, None, "classification") == (elsewhere, None)
    _set_env(monkeypatch, _torchrun_env(agent="/tmp/torchelastic_new/none_1", restart=0))
    assert elastic.elastic_resume(None, str(work), "classification") == (None, None)  # a new job: refused
    _set_env(monkeypatch, {})
    assert elastic.elastic_resume(None, str(work), "classification") == (None, None)  # not under torchrun


def test_restart_without_work_dir_finds_the_timestamped_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _set_env(monkeypatch, _torchrun_env(restart=0))
    ours, older = tmp_path / "runs" / "classification" / "20250101-000001", tmp_path / "runs" / "classification" / "a"
    for run_dir in (ours, older):
        run_dir.mkdir(parents=True)
    elastic.mark_run_dir(ours)
    (older / elastic.MARKER).write_text(json.dumps({**elastic.launch_identity(), "agent": "/tmp/torchelastic_old/n"}))
    _set_env(monkeypatch, _torchrun_env(restart=1))
    assert elastic.elastic_resume(None, None, "classification") == (None, Path("runs/classification/20250101-000001"))
    last = _run_with_checkpoint(ours)
    resume, work_dir = elastic.elastic_resume(None, None, "classification")
    assert (Path(resume).resolve(), work_dir) == (last, None)
    assert "torchrun restart of the workers: continuing the run in runs/classification/20250101-000001" in (
        capsys.readouterr().out
    )
    _set_env(monkeypatch, _torchrun_env(agent="/tmp/torchelastic_other/none_2", restart=1))
    assert elastic.elastic_resume(None, None, "classification") == (None, None)  # another launch's runs are not ours


def test_attempt_store_only_for_a_single_node_agent_store(monkeypatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert dist.attempt_store(None) is None  # plain env:// (no torchrun agent)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    assert dist.attempt_store(None) is None  # several agents count restarts on their own
    host = torch.distributed.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    env = {"GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(host.port), "WORLD_SIZE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    host.set("visionkit/attempt_0/rank_0", "dead peer")  # left by the killed attempt
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    store = dist.attempt_store(None)
    store.set("rank_0", "new peer")
    assert store.get("rank_0") == b"new peer" and host.get("visionkit/attempt_0/rank_0") == b"dead peer"


# -- torchrun end to end -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _descendants(pid: int) -> list[int]:
    found = _children(pid)
    return found + [d for child in found for d in _descendants(child)]


def _rank_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e[5:].decode() for e in env if e.startswith(b"RANK=")), None)


RENDEZVOUS = {
    # torchrun's static rendezvous (--master-port): where a restart read the killed attempt's gloo addresses
    "static": lambda port: [f"--master-port={port}"],
    # the multi-node style c10d rendezvous, on one node; this one runs without --work-dir
    "c10d": lambda port: ["--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", "--nnodes=1", "--rdzv-id=job"],
}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc (Linux)")
@pytest.mark.parametrize("rendezvous", ["static", pytest.param("c10d", marks=pytest.mark.slow)])
def test_torchrun_restart_after_a_killed_worker_resumes_and_finishes(tmp_path: Path, rendezvous: str) -> None:
    max_steps = 150
    work = tmp_path / "run" if rendezvous == "static" else None
    keys = dict(o.split("=", 1) for o in TINY_CLS)  # each key once (a key given twice is an error)
    keys.update({"trainer.epochs": "100", "trainer.max_steps": str(max_steps), "trainer.checkpoint_every": "10"})
    keys.update({"trainer.log_every": "10", "trainer.num_threads": "1", "data.num_workers": "0"})
    args = [f"{k}={v}" for k, v in keys.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1"]
    command += [*RENDEZVOUS[rendezvous](_free_port()), str(ROOT / "tools" / "train.py"), "--task", "cls", *args]
    command += ["--work-dir", str(work)] if work else []
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        agent = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    killed = None
    try:
        deadline = time.monotonic() + 240  # a hang fails the test instead of blocking the suite
        pattern = "run/checkpoints/last.pt" if work else "runs/*/*/checkpoints/last.pt"
        while not list(tmp_path.glob(pattern)):
            assert agent.poll() is None, f"torchrun ended before the first checkpoint:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        first_attempt = _children(agent.pid)
        killed = next(pid for pid in first_attempt if _rank_of(pid) == "1")
        os.kill(killed, signal.SIGKILL)
        code = agent.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for pid in [*_descendants(agent.pid), agent.pid]:  # nothing outlives the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text()
    assert code == 0, text[-4000:]
    # torchrun saw the first attempt fail (the killed rank, or its peer when that one noticed first) and restarted
    assert killed is not None and any(f"(pid: {pid})" in text.split("torchrun restart")[0] for pid in first_attempt)
    assert "torchrun restart of the workers: continuing the run in" in text
    resumed_at = int(text.split("resumed from ", 1)[1].split("step ", 1)[1].split()[0])
    assert 10 <= resumed_at < max_steps
    run_dirs = [work] if work else list((tmp_path / "runs" / "classification").iterdir())
    assert len(run_dirs) == 1  # the restart continued the same run dir, not a new timestamped one
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["steps"] == max_steps and summary["world_size"] == 2  # as many steps as an uninterrupted run
