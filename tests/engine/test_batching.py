"""data.batch_size: auto (CPU throughput, GPU memory), data.effective_batch_size, and data.sampler: balanced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import Dataset, Subset

import visionkit
from tests.conftest import ROOT, TINY_CLS, merged
from visionkit import load_config
from visionkit.engine import batching
from visionkit.engine.checkpoint import load_checkpoint, rng_state
from visionkit.engine.loader import BalancedBatchSampler, class_labels
from visionkit.engine.trainer import Trainer
from visionkit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; the previous thread count comes back after

# Dropout, BatchNorm and random augmentation in the main process: a trial that touched the weights,
# the running statistics or an RNG stream would change the run.
EXACT = merged(
    *TINY_CLS,
    "trainer.num_threads=1",
    "model.dropout=0.3",
    "trainer.log_every=1",
    "data.train.val_fraction=0.8",
    "data.train_transforms=[{name: Affine, translate_px: [-1, 1], rotate: [-15, 15], p: 1.0}]",
)


def _same_checkpoints(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert x["step"] == y["step"]
    for key, value in x["model"].items():
        assert torch.equal(value, y["model"][key]), key
    for slot in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(x["optimizers"]["main"]["state"][0][slot], y["optimizers"]["main"]["state"][0][slot])
    assert torch.equal(x["rng"]["torch"], y["rng"]["torch"])


def test_auto_batch_size_is_logged_recorded_and_leaves_the_run_unchanged(tmp_path: Path, capsys) -> None:
    auto = visionkit.train(None, merged(*EXACT, "trainer.epochs=3", "data.batch_size=auto", "trainer.max_steps=3"),
                           task="cls", work_dir=tmp_path / "auto")  # fmt: skip
    out = capsys.readouterr().out
    chosen = yaml.safe_load((auto.run_dir / "config.yaml").read_text())["data"]["batch_size"]
    assert chosen in (16, 32, 64, 128, 256, 512, 1024)  # powers of two up to the cap and this training set
    assert f"data.batch_size auto -> {chosen} (cpu images/s: " in out and " at 16 vs " in out
    overrides = merged(*EXACT, "trainer.epochs=3", f"data.batch_size={chosen}", "trainer.max_steps=3")
    fixed = visionkit.train(None, overrides, task="cls", work_dir=tmp_path / "fixed")
    _same_checkpoints(auto.run_dir, fixed.run_dir)
    # Resuming with `auto` in the config again takes the recorded batch size: no second probe.
    resumed = visionkit.train(None, merged(*EXACT, "trainer.epochs=3", "data.batch_size=auto", "trainer.max_steps=5"),
                              resume="auto", work_dir=tmp_path / "auto")  # fmt: skip
    assert "data.batch_size auto" not in capsys.readouterr().out
    assert load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["config"]["data"]["batch_size"] == chosen


def test_a_probe_restores_weights_buffers_modes_and_rngs() -> None:
    cfg = load_config(None, merged(*EXACT, "data.batch_size=16"), task="cls")
    trainer = Trainer(cfg, write=False)
    trainer.setup()
    trainer.module.eval()  # a mode the trials must not leave behind
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    rng = rng_state()
    size, how = batching.probe_batch_size(trainer)
    assert size >= 16 and how.startswith("cpu images/s")
    after = trainer.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm running stats
    assert not trainer.module.training and all(p.grad is None for p in trainer.module.parameters())
    assert torch.equal(rng["torch"], torch.get_rng_state()) and rng["python"] == rng_state()["python"]
    assert torch.equal(rng["numpy"]["keys"], rng_state()["numpy"]["keys"])


def test_candidate_sizes_stop_at_the_data_and_the_effective_batch() -> None:
    cfg = {"data": {"effective_batch_size": None}}
    assert batching.candidate_sizes(cfg, 1437, 1, batching.CPU_CAP) == [16, 32, 64, 128, 256, 512, 1024]
    assert batching.candidate_sizes(cfg, 100, 2, batching.CPU_CAP) == [16, 32]  # 50 samples per rank
    assert batching.candidate_sizes(cfg, 10, 1, batching.CPU_CAP) == [10]
    cfg["data"]["effective_batch_size"] = 96
    assert batching.candidate_sizes(cfg, 1437, 2, batching.CPU_CAP) == [16, 32]  # 48 per rank and update


def _setup(overrides: list[str]) -> Trainer:
    cfg = load_config(None, merged(*TINY_CLS, "trainer.num_threads=1", *overrides), task="cls")
    trainer = Trainer(cfg, write=False)
    trainer.setup()
    return trainer


def test_effective_batch_size_sets_accumulate(capsys) -> None:
    trainer = _setup(["data.batch_size=16", "data.effective_batch_size=40"])
    assert trainer.cfg["trainer"]["accumulate"] == 3  # ceil(40 / 16): 48 samples per update
    assert trainer.updates_per_epoch == -(-len(trainer.sampler) // 3)
    assert "trainer.accumulate -> 3 (data.effective_batch_size 40: 16 x 3 x 1 rank(s) = 48 per update)" in (
        capsys.readouterr().out
    )
    trainer = _setup(["data.batch_size=auto", "data.effective_batch_size=64"])
    d, t = trainer.cfg["data"], trainer.cfg["trainer"]
    assert d["batch_size"] in (16, 32, 64) and d["batch_size"] * t["accumulate"] == 64
    with pytest.raises(ConfigError, match="trainer.accumulate=2 conflicts with data.effective_batch_size=64"):
        _setup(["data.batch_size=16", "data.effective_batch_size=64", "trainer.accumulate=2"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=big", "'data.batch_size' must be a positive integer or 'auto'"),
        ("data.batch_size=0", "'data.batch_size' must be a positive integer or 'auto'"),
        ("data.sampler=weighted", "'data.sampler' is 'weighted'; accepted: null"),
        ("data.effective_batch_size=0", "'data.effective_batch_size' must be a positive integer or null"),
    ],
)
def test_config_checks(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override], task="cls")
    assert load_config(None, ["data.batch_size=auto", "data.sampler=balanced"], task="cls")["data"]["batch_size"]


# -- data.sampler: balanced ---------------------------------------------------------------------------
LABELS = [0] * 900 + [1] * 90 + [2] * 10  # 90% / 9% / 1%


def _epoch(sampler: BalancedBatchSampler, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_balanced_sampler_draws_classes_evenly_and_deterministically() -> None:
    sampler = BalancedBatchSampler(LABELS, 50, seed=3)
    assert len(sampler) == 20  # an epoch is as long as the data set
    drawn = Counter(LABELS[i] for epoch in range(3) for batch in _epoch(sampler, epoch) for i, *_ in batch)
    assert all(abs(drawn[c] / 3000 - 1 / 3) < 0.05 for c in range(3)), drawn
    again = BalancedBatchSampler(LABELS, 50, seed=3)
    assert _epoch(again, 1) == _epoch(sampler, 1)  # the same seed and epoch: the same batches
    assert _epoch(sampler, 1) != _epoch(sampler, 2)
    assert _epoch(BalancedBatchSampler(LABELS, 50, seed=4), 1) != _epoch(sampler, 1)


def test_balanced_sampler_resumes_mid_epoch_and_shards_ranks() -> None:
    full = _epoch(BalancedBatchSampler(LABELS, 32, seed=0), 2)
    assert _epoch(BalancedBatchSampler(LABELS, 32, seed=0), 2, start=5) == full[5:]  # indices and batch seeds
    ranks = [BalancedBatchSampler(LABELS, 32, seed=0, rank=r, world=3) for r in range(3)]
    shards = [[i for batch in _epoch(s, 2) for i, *_ in batch] for s in ranks]
    assert len(ranks[0]) == len(ranks[2]) == 11 and all(len(s) == 334 for s in shards)  # ceil(1000 / 3) each
    global_draw = ranks[0].global_draw(2)
    assert all(s == global_draw[r::3] for r, s in enumerate(shards))  # disjoint slices of one draw
    seeds = [{seed for batch in _epoch(s, 2) for _, seed, _ in batch} for s in ranks]
    assert not (seeds[0] & seeds[1])  # each rank's batches get their own augmentation seeds


class Tagged(Dataset):
    def __init__(self, labels: list) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)


class Asked(Dataset):
    def __len__(self) -> int:
        return 4

    def class_of(self, index: int) -> int:
        return index % 2


class Unlabelled(Dataset):
    def __len__(self) -> int:
        return 4


def test_class_labels_from_datasets() -> None:
    assert class_labels(Tagged(np.array([2, 0, 1]))) == [2, 0, 1]
    assert class_labels(Subset(Tagged([2, 0, 1]), [2, 0])) == [1, 2]
    assert class_labels(Asked()) == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match=r"data.sampler=balanced needs the class .* \(Unlabelled\)"):
        class_labels(Unlabelled())
    with pytest.raises(ConfigError, match="single-label"):
        class_labels(Tagged([[0, 1], [1]]))  # multi-label


def test_balanced_run_resumes_bit_exact(tmp_path: Path) -> None:
    cfg = merged(*EXACT, "data.sampler=balanced", "data.batch_size=64", "trainer.accumulate=2")  # 6 batches per epoch
    full = visionkit.train(None, [*cfg, "trainer.max_steps=4"], task="cls", work_dir=tmp_path / "full")
    visionkit.train(None, [*cfg, "trainer.max_steps=2"], task="cls", work_dir=tmp_path / "half")
    mid = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")
    assert mid["epoch"] == 0 and mid["batch_in_epoch"] == 4  # stopped inside the epoch
    resumed = visionkit.train(None, ["trainer.max_steps=4"], resume="auto", work_dir=tmp_path / "half")
    _same_checkpoints(full.run_dir, resumed.run_dir)


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun is installed with torch"
)
def test_torchrun_ranks_agree_on_auto_batch_and_balanced_batches(tmp_path: Path) -> None:
    proc = subprocess.run(
        merged(str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
         str(ROOT / "tools" / "train.py"), "--task", "cls", "--work-dir", str(tmp_path / "run"), *TINY_CLS,
         "trainer.num_threads=1", "data.batch_size=auto", "data.sampler=balanced", "data.effective_batch_size=128",
         "trainer.max_steps=2", "trainer.progress=false", "data.train.val_fraction=0.5", "data.val.val_fraction=0.05"),
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("data.batch_size auto -> ") == 1  # rank 0 probes and says so
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    batch, accumulate = cfg["data"]["batch_size"], cfg["trainer"]["accumulate"]
    assert batch in (16, 32, 64) and batch * accumulate * 2 == 128
    ranks = json.loads((tmp_path / "run" / "summary.json").read_text())["ranks"]
    assert ranks[0]["batches"] == ranks[1]["batches"] == 2 * accumulate  # both ranks ran the same batch count


def test_memory_search_and_out_of_memory_recovery_without_a_gpu() -> None:
    sizes = [16, 32, 64, 128, 256, 512, 1024]
    tried: list[int] = []

    def fits(size: int) -> bool:
        tried.append(size)
        return size <= 300

    assert batching.largest_fit(fits, sizes) == (288, 320)  # doubling to 512, then bisection in steps of 8
    assert tried == [16, 32, 64, 128, 256, 512, 384, 320, 288]
    assert batching.with_headroom(288, 320) == 256 and batching.with_headroom(1024, None) == 1024
    assert batching.largest_fit(lambda size: size <= 2, sizes) == (2, 16)
    assert batching.largest_fit(lambda size: False, sizes) == (0, 16)
    cleaned: list[bool] = []

    def out_of_memory() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert batching._guarded(out_of_memory, lambda: cleaned.append(True)) is None and cleaned == [True]
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not taken for memory limits
        batching._guarded(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")), lambda: None)


# -- the GPU path ---------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_auto_batch_size_on_a_gpu_finds_the_memory_edge(tmp_path: Path, capsys) -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 3 * 2**30 / total))  # about 3 GiB for this process
    try:
        gpu = ["trainer.device=cuda", "data.image_size=64", "model.width=32", "model.depth=3", "trainer.precision=fp32"]
        cfg = load_config(
            None, merged(*TINY_CLS, *gpu, "data.batch_size=16", "data.train.val_fraction=0.05"), task="cls"
        )
        trainer = Trainer(cfg, write=False)
        trainer.setup()
        before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
        cuda_rng = torch.cuda.get_rng_state()
        allocated = torch.cuda.memory_allocated()
        size, how = batching.probe_batch_size(trainer)
        assert "out of memory at " in how and size % 8 == 0 and size >= 16, how
        edge = int(how.split("out of memory at ")[1].split(",")[0])
        assert size <= 0.9 * edge
        assert torch.cuda.memory_allocated() - allocated < 64 * 2**20  # trials given back (cuBLAS keeps a workspace)
        assert all(torch.equal(before[k], v) for k, v in trainer.module.state_dict().items())
        assert torch.equal(cuda_rng, torch.cuda.get_rng_state())
        del trainer
        # The chosen batch trains (with AdamW's state allocated) within the same memory.
        auto = merged(*TINY_CLS, *gpu, "data.batch_size=auto", "trainer.max_steps=2", "data.train.val_fraction=0.05")
        run = visionkit.train(None, auto, task="cls", work_dir=tmp_path / "run")
        chosen = yaml.safe_load((run.run_dir / "config.yaml").read_text())["data"]["batch_size"]
        assert f"data.batch_size auto -> {chosen} (cuda: " in capsys.readouterr().out and chosen >= size // 2
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
