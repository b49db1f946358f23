"""Core services on a task written only against the Task interface: facts, evaluation, prediction, skips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visionkit
from tests.conftest import merged
from tests.engine.toy_task import register, register_nopredict
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.errors import ConfigError

FAST = ["data.batch_size=16", "data.num_workers=0", "trainer.epochs=2", "trainer.progress=false", "optimizer.lr=0.1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> visionkit.engine.report.RunResult:
    register()
    return visionkit.train({"task": "toy"}, FAST, work_dir=tmp_path_factory.mktemp("toy") / "run")


def test_facts_travel_with_the_checkpoint_not_the_config(run) -> None:
    ckpt = load_checkpoint(run.best_checkpoint)
    assert ckpt["facts"]["class_names"] == ["red", "green", "blue"]
    assert ckpt["facts"]["num_classes"] == 3 and ckpt["facts"]["channels"] == 3
    assert ckpt["config"]["data"].get("class_names") is None  # nothing written into the config
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["data"]["class_names"] == ["red", "green", "blue"]
    assert summary["table"] == [summary["final"]["val/acc"] * summary["final"]["val/count"]]


def test_validation_loss_is_a_per_sample_mean(run) -> None:
    task, model, _ = visionkit.load_model(run.best_checkpoint)
    metrics = visionkit.evaluate(run.best_checkpoint, ["data.batch_size=7"])  # 48 = 6 * 7 + 6: unequal batches
    from tests.engine.toy_task import ColourSet

    data = ColourSet("val")
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        y = torch.tensor([data[i][1] for i in range(len(data))])
        expected = torch.nn.functional.cross_entropy(model(x), y).item()
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val/count"] == 48


def test_predict_mirrors_input_paths(run, tmp_path: Path) -> None:
    for folder, colour in (("a", (220, 30, 30)), ("b", (30, 40, 220))):
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(tmp_path / "in" / folder / "x.png")
    out = visionkit.predict(run.best_checkpoint, [tmp_path / "in"], tmp_path / "out")
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    assert [r["images"] for r in records] == ["images/a/x.png", "images/b/x.png"]
    assert [r["name"] for r in records] == ["red", "blue"]
    assert (tmp_path / "out" / "images" / "a" / "x.png").is_file() and (tmp_path / "out" / "images/b/x.png").is_file()
    assert out["data"]["class_names"] == ["red", "green", "blue"]
    with pytest.raises(ConfigError, match="topkk.*Did you mean 'topk'"):
        visionkit.predict(run.best_checkpoint, [tmp_path / "in"], tmp_path / "out2", topkk=2)


def test_task_without_predict_gets_a_clear_error(run, tmp_path: Path) -> None:
    register_nopredict()
    ckpt = load_checkpoint(run.best_checkpoint)
    ckpt["config"]["task"] = "toy_nopredict"
    torch.save(ckpt, tmp_path / "np.pt")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "i.png")
    with pytest.raises(ConfigError, match="does not implement prediction"):
        visionkit.predict(tmp_path / "np.pt", [tmp_path / "i.png"], tmp_path / "out")


def test_skipped_step_changes_nothing(tmp_path: Path) -> None:
    register()
    cfg = merged(*FAST, "trainer.epochs=1", "trainer.log_every=1", "scheduler.warmup_steps=2")
    one = visionkit.train({"task": "toy"}, [*cfg, "trainer.max_steps=1"], work_dir=tmp_path / "one")
    # From step 1 on every training_step returns None: batches 2 and 3 of the epoch must change nothing.
    skip = visionkit.train({"task": "toy", "toy": {"skip_from": 1}}, cfg, work_dir=tmp_path / "skip")
    a, b = (load_checkpoint(r.run_dir / "checkpoints" / "last.pt") for r in (one, skip))
    assert a["step"] == b["step"] == 1 and b["epoch"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert b["schedulers"]["main"]["last_epoch"] == a["schedulers"]["main"]["last_epoch"] == 1
    sa, sb = a["optimizers"]["main"]["state"], b["optimizers"]["main"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) and int(sb[i]["step"]) == 1 for i in sa)


def test_compute_twice_under_torchrun_gives_the_same_numbers(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "scores.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*cmd, str(ROOT / "tests/engine/dist_evaluator.py"), str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads(out.read_text())
    assert scores["first"] == scores["again"]
    torch.manual_seed(0)
    logits, target, losses = torch.randn(10, 3), torch.randint(0, 3, (10,)), torch.rand(10)
    scalars, extras = scores["first"]
    assert scalars["val/count"] == 10  # both ranks' samples, counted once
    assert scalars["val/acc"] == pytest.approx(float((logits.argmax(1) == target).float().mean()))
    assert scalars["val/loss"] == pytest.approx(float(losses.mean()), rel=1e-6)  # per-sample mean across ranks


def test_bad_predict_option_values_and_declared_facts_are_config_errors(run, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "i.png")
    with pytest.raises(ConfigError, match="'batch_size' is 'abc'.*int"):
        visionkit.predict(run.best_checkpoint, [tmp_path / "i.png"], tmp_path / "o", batch_size="abc")
    with pytest.raises(ConfigError, match="'batch_size' must be a positive integer"):
        visionkit.predict(run.best_checkpoint, [tmp_path / "i.png"], tmp_path / "o", batch_size=0)
    with pytest.raises(ConfigError, match=r"data.mean.* 0.5"):
        visionkit.load_config({"task": "toy"}, ["data.mean=0.5"])
    with pytest.raises(ConfigError, match=r"data.class_names is 'red,green'"):
        visionkit.load_config({"task": "toy"}, ["data.class_names=red,green"])


def test_resume_on_data_with_other_classes_is_refused(run, tmp_path: Path) -> None:
    from visionkit.errors import DataError

    ckpt = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")
    ckpt["facts"]["class_names"] = ["blue", "green", "red"]  # as if the class folders had been renamed
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, tmp_path / "r" / "checkpoints" / "last.pt")
    with pytest.raises(DataError, match="class_names"):
        visionkit.train({"task": "toy"}, merged(*FAST, "trainer.epochs=3"), resume=tmp_path / "r")


def test_monitor_override_and_a_missing_monitor(tmp_path: Path) -> None:
    from visionkit.errors import VisionkitError

    register()
    run = visionkit.train({"task": "toy"}, [*FAST, "trainer.monitor=val/loss"], work_dir=tmp_path / "m")
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val/loss" and summary["monitor_mode"] == "min"
    assert summary["best_value"] == min(r["val/loss"] for r in _records(run.run_dir) if "val/loss" in r)
    with pytest.raises(VisionkitError, match="'val/top1' is not a validation metric.*val/acc"):
        visionkit.train({"task": "toy"}, [*FAST, "trainer.monitor=val/top1"], work_dir=tmp_path / "x")
    assert not (tmp_path / "x" / "checkpoints" / "last.pt").exists()  # refused before training, nothing to resume


def test_a_work_dir_holding_a_run_is_not_overwritten(run) -> None:
    with pytest.raises(ConfigError, match="already holds a run.*--resume auto"):
        visionkit.train({"task": "toy"}, FAST, work_dir=run.run_dir)


def test_checkpoint_paths_accept_run_folders_and_refuse_other_files(run, tmp_path: Path) -> None:
    from visionkit.errors import VisionkitError

    assert visionkit.evaluate(run.run_dir)["val/count"] == 48  # a run folder means its best checkpoint
    import os
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):  # noqa: ANN204 - what a hostile file does: call a function while unpickling
            return (os.system, ("touch pwned",))

    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    with zipfile.ZipFile(tmp_path / "cut.pt", "w") as z:
        z.writestr("archive/data.pkl", b"no more")
    for protocol in (2, 4):
        (tmp_path / f"evil{protocol}.pt").write_bytes(pickle.dumps({"model": Evil()}, protocol=protocol))
    expected = {
        "random.pt": "its bytes are not a PyTorch file",
        "cut.pt": "it is a zip archive but not a complete PyTorch file",
        "evil2.pt": r"it is a pickle that holds more than tensors and plain containers \(it names posix.system\)",
        "evil4.pt": "it is a pickle that holds more than tensors and plain containers, and files are loaded",
    }
    for name, reason in expected.items():
        with pytest.raises(VisionkitError, match=f"^'.*{name}' is not a visionkit checkpoint: {reason}") as info:
            visionkit.evaluate(tmp_path / name)
        assert "weights_only=False" not in str(info.value) and "will likely succeed" not in str(info.value)
    assert not (tmp_path / "pwned").exists()


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_declarable_fact_keys_are_the_fields_of_the_facts_record() -> None:
    import dataclasses

    from visionkit.config import BASE_DEFAULTS, FACT_KEYS
    from visionkit.data.facts import DataFacts

    assert FACT_KEYS == tuple(f.name for f in dataclasses.fields(DataFacts) if f.name != "extra")
    assert all(BASE_DEFAULTS["data"][key] is None for key in FACT_KEYS)


def test_metric_protocol_mistakes_are_plugin_errors_naming_the_metric() -> None:
    import torch

    from visionkit import Metric
    from visionkit.engine.metrics import Evaluator
    from visionkit.errors import PluginError

    class ReadsPred(Metric):
        inputs = ("pred",)

        def update(self, outputs):  # noqa: ANN001, ANN201
            self.seen = outputs["pred"]

        def compute(self):  # noqa: ANN201
            return torch.tensor(1.0)  # a tensor, not a dict

    evaluator = Evaluator([ReadsPred()])
    with pytest.raises(PluginError, match=r"'ReadsPred' .*reads 'pred' .*hold \['logits', 'loss'\]"):
        evaluator.update({"logits": torch.zeros(2), "loss": torch.tensor(0.5)}, 2)
    evaluator.update({"pred": torch.zeros(2)}, 2)
    with pytest.raises(PluginError, match=r"'ReadsPred' .*returned a Tensor from compute\(\); .*returns a dict"):
        evaluator.compute()
