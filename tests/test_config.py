"""Config: _base_ inheritance, dotted overrides, validation errors that name the key."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import ROOT, run_tool
from visionkit import load_config
from visionkit.config import parse_overrides
from visionkit.errors import ConfigError


def test_base_inheritance_and_overrides(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("task: cls\ntrainer: {epochs: 3, seed: 7}\noptimizer: {name: sgd, lr: 0.1}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrainer: {epochs: 5}\n")
    cfg = load_config(tmp_path / "child.yaml", ["optimizer.lr=1e-3", "trainer.ema=0.99", "data.train_transforms=[]"])
    assert cfg["task"] == "classification"
    assert cfg["trainer"]["epochs"] == 5 and cfg["trainer"]["seed"] == 7
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.001, "decay_norm_and_bias": False}
    assert cfg["trainer"]["ema"] == 0.99
    assert cfg["trainer"]["precision"] == "auto"  # defaults fill every shared key


def test_parse_overrides_types() -> None:
    out = parse_overrides(["a.b=3", "a.c=1e-4", "d=true", "e=[1, 2]", "f=null", "g=hello"])
    assert out == {"a": {"b": 3, "c": 1e-4}, "d": True, "e": [1, 2], "f": None, "g": "hello"}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["novalue"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epcohs=3", r"Unknown config key 'trainer.epcohs'.*Did you mean 'epochs'"),
        ("trainr.epochs=3", r"Unknown config key 'trainr'.*Did you mean 'trainer'"),
        ("trainer.precision=fp61", r"'trainer.precision'.*accepted values: auto, fp32, fp16-mixed, bf16-mixed"),
        ("trainer.device=gpu", r"'trainer.device' is 'gpu'"),
        ("trainer.epochs=three", r"'trainer.epochs' has value 'three'"),
        ("data.batch_size=0", r"'data.batch_size' must be a positive integer"),
        ("trainer.ema=1.5", r"'trainer.ema' must be a decay in \(0, 1\)"),
        ("trainer.num_threads=0", r"'trainer.num_threads' must be a positive integer or null"),
        ("model.widht=8", r"model 'small_cnn' has no option 'widht'.*Did you mean 'width'"),
        ("model.name=small_cn", r"Unknown model 'small_cn'.*Did you mean 'small_cnn'"),
        ("data.train.name=digit", r"Unknown dataset 'digit'.*Did you mean 'digits'"),
        ("optimizer.name=adamx", r"Unknown optimizer 'adamx'"),
        ("optimizer.momentun=0.9", r"optimizer 'adamw' has no option 'momentun'"),
        ("scheduler.name=cosin", r"Unknown scheduler 'cosin'.*Did you mean 'cosine'"),
        ("loss.label_smoothin=0.1", r"loss 'cross_entropy' has no option 'label_smoothin'"),
    ],
)
def test_bad_keys_and_values_are_rejected_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override], task="cls")


def test_missing_config_file_and_unknown_task() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such.yaml")
    with pytest.raises(ConfigError, match=r"Unknown task 'clss'.*Did you mean"):
        load_config(None, task="clss")


def test_renaming_a_component_drops_the_old_builders_options() -> None:
    cfg = load_config(None, ["model.name=mlp"], task="cls")
    assert cfg["model"] == {"name": "mlp"}
    cfg = load_config(None, ["optimizer.name=sgd"], task="cls")
    assert cfg["optimizer"]["lr"] == 0.003  # optimizer options carry over


def test_cli_user_error_exits_2_without_traceback(capsys, monkeypatch) -> None:
    from visionkit.cli import main

    proc = run_tool("train", "--task", "cls", "trainer.epcohs=3")  # the whole process: exit status and stderr
    assert proc.returncode == 2
    assert "Did you mean 'epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr
    monkeypatch.chdir(ROOT)  # the same command line in process (spares two interpreter start-ups)
    assert main(["train", "--config", "configs/cls/nope.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", "configs/cls"]) == 2
    err = capsys.readouterr().err
    assert "is a folder; pass a YAML file inside it" in err and "default.yaml" in err


def test_overrides_may_follow_options_and_a_mistyped_command_is_named(capsys) -> None:
    from visionkit.cli import main

    assert main(["trian", "--task", "cls"]) == 2
    assert "error: unknown command 'trian'. Did you mean 'train'?" in capsys.readouterr().err
    proc = run_tool("train", "--task", "cls", "trainer.max_steps=1", "--dry-run", "trainer.num_threads=1")
    assert proc.returncode == 0, proc.stderr
    assert "dry run ok" in proc.stdout


def test_resolved_config_is_written(tmp_path) -> None:
    import visionkit
    from tests.conftest import TINY_CLS

    result = visionkit.train(None, [*TINY_CLS, "trainer.max_steps=1"], task="cls", work_dir=tmp_path / "run")
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["task"] == "classification"
    assert saved["trainer"]["max_steps"] == 1
    # The config is written as resolved from the user's files: data facts travel beside it, not inside it.
    assert saved["data"]["num_classes"] is None and saved["data"]["class_names"] is None
    facts = json.loads((result.run_dir / "summary.json").read_text())["data"]
    assert facts["num_classes"] == 10 and facts["class_names"][3] == "3"


def test_errors_raised_in_loader_workers_print_only_their_message() -> None:
    from torch.utils.data import DataLoader, Dataset

    from visionkit.cli import user_message
    from visionkit.errors import DataError

    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> int:
            raise DataError("Mask file 'x.png' is 10x10 but its image is 12x12.")

    with pytest.raises(DataError) as info:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(info.value)
    assert user_message(info.value) == "Mask file 'x.png' is 10x10 but its image is 12x12."


def test_a_user_config_may_inherit_a_packaged_one(tmp_path) -> None:
    (tmp_path / "mine.yaml").write_text("_base_: cls/default.yaml\ntrainer: {epochs: 2}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg["task"] == "classification" and cfg["model"]["name"] == "small_cnn" and cfg["trainer"]["epochs"] == 2


def test_yaml_alias_bomb_is_refused_without_expanding(tmp_path) -> None:
    import time

    lines = ["a0: &a0 [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values
    bomb = "\n".join(lines) + "\ntask: cls\ndata:\n  mean: *a8\n"
    assert len(bomb) < 1000
    (tmp_path / "bomb.yaml").write_text(bomb)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100000 values"):
        load_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 5
    with pytest.raises(ConfigError, match="bytes"):
        parse_overrides(["data.mean=" + "[" + ",".join(["0.5"] * 300_000) + "]"])


def test_duplicate_yaml_keys_duplicate_overrides_and_base_cycles_are_errors(tmp_path) -> None:
    (tmp_path / "dup.yaml").write_text("task: cls\ntrainer:\n  epochs: 3\n  epochs: 5\n")
    (tmp_path / "child.yaml").write_text("_base_: dup.yaml\n")
    with pytest.raises(ConfigError, match="dup.yaml': The key 'epochs' appears twice.*line 4"):
        load_config(tmp_path / "child.yaml")  # the message names the file that holds the key twice
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\ntask: cls\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself through _base_"):
        load_config(tmp_path / "a.yaml")
    proc = run_tool("train", "--config", str(tmp_path / "a.yaml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    with pytest.raises(
        ConfigError, match="'trainer.epochs' is given twice .*'trainer.epochs=1' and 'trainer.epochs=3'"
    ):
        parse_overrides(["trainer.epochs=1", "model.width=8", "trainer.epochs=3"])


def test_mean_and_std_must_be_flat_lists_of_one_or_channel_count_numbers(tmp_path) -> None:
    for value, expected in (("[[0.5]]", "flat list of numbers"), ("[0.5, 0.5]", "2 numbers but the images have 1")):
        proc = run_tool("train", "--task", "cls", f"data.mean={value}", f"data.std={value}", "--dry-run", cwd=tmp_path)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
