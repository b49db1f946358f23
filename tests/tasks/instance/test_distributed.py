"""The instance task under torchrun with two CPU processes: one run folder, validation gathered from both ranks
(mask AP of the whole val split, equal to a one-process evaluation of the same checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import visionkit
from tests.conftest import ROOT, merged
from tests.tasks.instance.test_task import MASKRCNN, TINY

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(shutil.which("torchrun", path=str(TORCHRUN.parent)) is None, reason="torchrun comes with torch")
def test_torchrun_two_processes_gather_the_whole_val_split(tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "tools" / "train.py")]
    proc = subprocess.run(
        [*command, "--config", MASKRCNN, *merged(*TINY, "data.batch_size=4"), "--work-dir", str(run)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and [r["rank"] for r in summary["ranks"]] == [0, 1]
    assert proc.stdout.count("done in") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    alone = visionkit.evaluate(run / "checkpoints" / "last.pt", device="cpu")
    for key in ("val/mask_mAP", "val/mask_mAP50", "val/box_mAP"):
        assert abs(summary["final"][key] - alone[key]) < 1e-9, key
