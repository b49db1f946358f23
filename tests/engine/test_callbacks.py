"""Loop hooks: event order, callbacks from the config and the API, loggers, errors, exceptions."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import visionkit
from tests.engine.toy_task import register
from visionkit import Callback
from visionkit.errors import ConfigError
from visionkit.registry import CALLBACKS

FAST = ["data.batch_size=16", "data.num_workers=0", "trainer.epochs=2", "trainer.progress=false", "optimizer.lr=0.1"]


class Recorder(Callback):
    """Remembers every event it sees."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, state):  # noqa: D102, ANN001, ANN201
        self.events.append("fit_start")

    def on_epoch_start(self, state):  # noqa: D102, ANN001, ANN201
        self.events.append("epoch_start")

    def on_batch_end(self, state):  # noqa: D102, ANN001, ANN201
        self.events.append("batch" + ("+" if state.updated else ""))

    def on_epoch_end(self, state):  # noqa: D102, ANN001, ANN201
        self.events.append("epoch_end")

    def on_validation_end(self, state, record):  # noqa: D102, ANN001, ANN201
        self.events.append(f"val:{record['step']}")

    def on_checkpoint_saved(self, state, path, best):  # noqa: D102, ANN001, ANN201
        self.events.append("best" if best else "last")

    def on_fit_end(self, state, summary):  # noqa: D102, ANN001, ANN201
        self.events.append("fit_end")

    def on_exception(self, state, error):  # noqa: D102, ANN001, ANN201
        self.events.append(f"error:{type(error).__name__}")


def test_events_in_order(tmp_path: Path) -> None:
    register()
    rec = Recorder()
    visionkit.train({"task": "toy"}, [*FAST, "trainer.accumulate=2"], work_dir=tmp_path / "r", callbacks=[rec])
    # 3 batches per epoch, accumulation 2: updates after batches 2 and 3 (the epoch's last batch).
    # At an epoch's end the built-in validator runs first; the checkpoint is written after every callback.
    epoch = ["epoch_start", "batch", "batch+", "batch+", "val:2", "epoch_end", "best", "last"]
    assert rec.events[:9] == ["fit_start", *epoch]
    assert rec.events[-1] == "fit_end" and rec.events.count("epoch_end") == 2


class Counting(Callback):
    """Counts updates and stops the run after `stop_at` of them; its count is resumable state."""

    def __init__(self, stop_at: int = 0) -> None:
        self.updates, self.stop_at = 0, stop_at

    def on_batch_end(self, state):  # noqa: ANN001, ANN201
        self.updates += int(state.updated)
        if self.stop_at and self.updates >= self.stop_at:
            state.stop = True

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]


def test_checkpoints_hold_callback_state_and_stop_ends_the_run_mid_epoch(tmp_path: Path) -> None:
    from visionkit.engine.checkpoint import load_checkpoint

    register()
    run = visionkit.train({"task": "toy"}, FAST, work_dir=tmp_path / "s", callbacks=[Counting(), Counting(4)])
    ckpt = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["batch_in_epoch"] == 1  # stopped after the first batch of epoch 2
    assert ckpt["callbacks"]["Counting"] == {"updates": 4} and ckpt["callbacks"]["Counting#1"] == {"updates": 4}
    resumed = Counting()
    visionkit.train({"task": "toy"}, FAST, resume=run.run_dir, callbacks=[resumed, Counting()])
    assert resumed.updates == 6  # restored from the checkpoint, then the last two updates of epoch 2


def test_callbacks_from_the_config_and_csv_logger(tmp_path: Path) -> None:
    register()
    seen: list[int] = []

    class Counter(Callback):
        def __init__(self, every: int = 1) -> None:
            self.every = every

        def on_validation_end(self, state, record):  # noqa: ANN001, ANN201
            seen.append(record["step"])

    CALLBACKS.register("test_counter", Counter, override=True)
    cfg = {"task": "toy", "callbacks": [{"name": "csv"}, {"name": "test_counter", "every": 2}]}
    run = visionkit.train(cfg, [*FAST, "trainer.log_every=1"], work_dir=tmp_path / "c")
    assert seen == [3, 6]
    rows = list(csv.DictReader(open(run.run_dir / "metrics.csv")))
    assert [r["step"] for r in rows if r.get("val/acc")] == ["3", "6"]
    assert [r["step"] for r in rows if r.get("train/loss")] == ["1", "2", "3", "4", "5", "6"]


def test_tensorboard_logger_writes_events(tmp_path: Path) -> None:
    register()
    visionkit.train({"task": "toy", "callbacks": [{"name": "tensorboard"}]}, FAST, work_dir=tmp_path / "t")
    assert list((tmp_path / "t" / "tb").glob("events.out.tfevents.*"))


def test_unknown_callback_is_a_config_error() -> None:
    register()
    with pytest.raises(ConfigError, match="Unknown callback 'cvs'.*csv"):
        visionkit.load_config({"task": "toy", "callbacks": [{"name": "cvs"}]})
    with pytest.raises(ConfigError, match="callbacks\\[0\\] 'csv' has no option 'file'"):
        visionkit.load_config({"task": "toy", "callbacks": [{"name": "csv", "file": "x"}]})


def test_exception_event(tmp_path: Path) -> None:
    register()

    class Boom(Callback):
        def on_epoch_end(self, state):  # noqa: ANN001, ANN201
            raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        visionkit.train({"task": "toy"}, FAST, work_dir=tmp_path / "b", callbacks=[rec, Boom()])
    assert rec.events[-1] == "error:RuntimeError"
