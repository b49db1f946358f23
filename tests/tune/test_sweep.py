"""Optuna sweeps: pruning from validation, resuming from the storage, the best config retraining, bad spaces."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import yaml

from tests.conftest import TINY_DATA, merged
from visionkit.cli import train_main
from visionkit.cli.tune import tune_main

pytestmark = pytest.mark.usefixtures("one_thread")

# 8x8 digits, batches of 64, three validations per trial: a trial takes a few seconds.
SWEEP_CFG = merged(*TINY_DATA, "model.depth=2", "data.batch_size=64", "trainer.epochs=3", "trainer.progress=false")
# Very small learning rates learn nothing in three epochs: the median pruner has honest work to do.
SPACE = {
    "optimizer.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
    "model.width": {"type": "int", "low": 8, "high": 16, "step": 8},
}


def _sweep(tmp_path, trials: int, *extra: str) -> dict:
    status = tune_main(
        merged("sweep", "--task", "cls", *SWEEP_CFG, "--space", str(tmp_path / "space.yaml"), "--trials", str(trials),
         "--out", str(tmp_path / "sweep"), "--prune-startup", "2", "--prune-warmup", "1", *extra)
    )  # fmt: skip
    assert status == 0
    return json.loads((tmp_path / "sweep" / "results.json").read_text())


def test_sweep_prunes_resumes_and_best_config_retrains(tmp_path, monkeypatch, capsys):
    """4 trials, then re-run to 6 with the same storage; >= 1 pruned; best_config.yaml retrains to the best top-1."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    first = _sweep(tmp_path, 4)
    assert len(first["trials"]) == 4 and (tmp_path / "sweep" / "study.db").is_file()

    second = _sweep(tmp_path, 6)
    rows = second["trials"]
    assert [r["trial"] for r in rows] == list(range(6))
    assert rows[:4] == first["trials"]  # the finished trials were not run again
    assert second["counts"]["pruned"] >= 1 and second["counts"]["complete"] >= 2
    assert second["counts"]["pruned"] + second["counts"]["complete"] == 6
    for row in rows:  # every trial is a normal run folder with its config
        cfg = yaml.safe_load((tmp_path / "sweep" / f"trial_{row['trial']}" / "config.yaml").read_text())
        assert (
            cfg["optimizer"]["lr"] == pytest.approx(row["optimizer.lr"]) and cfg["model"]["width"] == row["model.width"]
        )
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert all(r["epochs"] < 3 for r in pruned)  # stopped before the last epoch
    out = capsys.readouterr().out
    assert "| trial | state" in out and "pruned" in out
    for name in ("results.csv", "history.png", "best_config.yaml"):
        assert (tmp_path / "sweep" / name).is_file()

    assert _sweep(tmp_path, 6)["trials"] == rows  # nothing left to do

    best = second["best"]
    assert best["value"] == max(r["value"] for r in rows if r["state"] == "complete")
    assert train_main(["--config", str(tmp_path / "sweep" / "best_config.yaml")]) == 0
    (run,) = (tmp_path / "runs" / "classification").iterdir()
    retrained = json.loads((run / "summary.json").read_text())["best_value"]
    assert retrained >= best["value"]


@pytest.mark.parametrize(
    "space, words",
    [
        (
            {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            ["optimizer.lr", "float, int, categorical"],
        ),
        ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.01}}, ["optimizer.lr", "greater than high"]),
        ({"optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, ["optimizer.lr", "low > 0"]),
        ({"model.widht": {"type": "int", "low": 8, "high": 32}}, ["model.widht", "width"]),
        ({"trainer.epoch": {"type": "int", "low": 1, "high": 3}}, ["trainer.epoch", "epochs"]),
        ({"model.width": {"type": "categorical", "choices": []}}, ["model.width", "non-empty"]),
        ({"model.width": {"type": "int", "low": 8.5, "high": 32}}, ["model.width", "integer"]),
    ],
)
def test_bad_space_files_exit_2(tmp_path, capsys, space, words):
    """An unknown type, low > high, a key the config does not have...: exit 2 naming the key, before any trial."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    args = merged(
        "sweep", "--task", "cls", *SWEEP_CFG, "--space", str(path), "--trials", "2", "--out", str(tmp_path / "s")
    )
    assert tune_main(args) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not list(tmp_path.glob("s/trial_*"))


def test_resuming_with_another_space_is_refused(tmp_path, capsys):
    """The study remembers its space and config: a re-run with a different one exits 2 and names the change."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"optimizer.lr": SPACE["optimizer.lr"]}))
    args = merged(
        "sweep", "--task", "cls", *SWEEP_CFG, "--space", str(path), "--trials", "0", "--out", str(tmp_path / "s")
    )
    assert tune_main(args) == 2  # --trials 0
    assert tune_main(merged(*args[:-3], "1", *args[-2:], "trainer.max_steps=2", "trainer.epochs=1")) == 0
    path.write_text(yaml.safe_dump(SPACE))
    assert tune_main(merged(*args[:-3], "1", *args[-2:], "trainer.max_steps=2", "trainer.epochs=1")) == 2
    assert "space" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"optimizer.lr": SPACE["optimizer.lr"]}))
    assert tune_main(merged(*args[:-3], "1", *args[-2:], "trainer.max_steps=3", "trainer.epochs=1")) == 2
    assert "trainer.max_steps: 2 -> 3" in capsys.readouterr().err


def test_a_failing_trial_is_recorded_not_fatal(tmp_path, monkeypatch):
    """A combination the config refuses (SGD's momentum carried over to AdamW) fails that trial only."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"optimizer.name": ["sgd", "adamw"]}))
    status = tune_main(
        merged("sweep", "--task", "cls", *SWEEP_CFG, "trainer.max_steps=2", "trainer.epochs=1", "optimizer.name=sgd",
         "optimizer.momentum=0.9", "--space", "space.yaml", "--trials", "4", "--out", "s", "--seed", "1")
    )  # fmt: skip
    assert status == 0
    rows = json.loads((tmp_path / "s" / "results.json").read_text())["trials"]
    assert len(rows) == 4 and {r["state"] for r in rows} == {"complete", "fail"}
    for row in rows:
        assert (row["state"] == "fail") == (row["optimizer.name"] == "adamw")
        assert ("momentum" in row["note"]) == (row["state"] == "fail")


def test_missing_optuna_names_the_extra(tmp_path, monkeypatch, capsys):
    """Without optuna: exit 2 and the `tune` extra to install."""
    monkeypatch.setitem(sys.modules, "optuna", None)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    assert tune_main(["sweep", "--task", "cls", "--space", str(tmp_path / "space.yaml"), "--trials", "2"]) == 2
    assert "pip install 'visionkit[tune]'" in capsys.readouterr().err


def test_a_crashed_trial_is_run_again_with_its_values(tmp_path, monkeypatch):
    """A trial left running by a worker that died is failed on re-run and queued again with the same values."""
    import optuna

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"optimizer.lr": SPACE["optimizer.lr"]}))
    args = merged(
        "sweep", "--task", "cls", *SWEEP_CFG, "trainer.max_steps=2", "trainer.epochs=1", "--space", "space.yaml"
    )
    assert tune_main([*args, "--trials", "1", "--out", "s"]) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.load_study(study_name="classification-default", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 3e-2, log=True)})
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")  # killed mid-trial
    assert tune_main([*args, "--trials", "2", "--out", "s"]) == 0
    rows = json.loads((tmp_path / "s" / "results.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["complete", "fail", "complete"]
    assert rows[2]["note"] == "retry of trial 1" and rows[2]["optimizer.lr"] == trial.params["optimizer.lr"]
