"""Batches for training: the train/val loaders, `data.batch_size: auto` and class-balanced sampling."""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from visionkit.engine import distributed as dist
from visionkit.engine.checkpoint import load_checkpoint, rng_state, set_rng_state
from visionkit.engine.contracts import StepContext, Task
from visionkit.engine.loader import build_loader, class_labels
from visionkit.errors import ConfigError, VisionkitError

START = 16  # the first batch size tried
CPU_CAP, GPU_CAP = 1024, 8192  # the largest batch size tried
MIN_GAIN = 1.10  # CPU: a batch twice as large must raise images/s by 10% to be worth it
HEADROOM = 0.9  # GPU: use 90% of the largest batch that fits
POOL = 32  # distinct training samples loaded for the trials (repeated to fill a batch)
CPU_SECONDS = 0.5  # CPU: timed seconds per pair of sizes compared (within the rounds below)
CPU_ROUNDS_MIN, CPU_ROUNDS_MAX = 3, 20


class TrialParts(Protocol):
    """What a batch-size trial trains: the run's config, task, model, device, precision and training set."""

    cfg: dict[str, Any]
    task: Task
    module: nn.Module
    device: torch.device
    autocast: Callable[[], Any]
    train_set: Any


@dataclass
class Loaders:
    """The run's data loaders and the batch settings they were built with (resolved from `data.batch_size: auto`
    and `data.effective_batch_size`, for the run's config.yaml to record)."""

    train: Any
    sampler: Any
    val: Any
    batch_size: int
    accumulate: int
    updates_per_epoch: int


def build_loaders(
    parts: TrialParts, val_set: Any, resume: str | Path | None = None, say: Callable[[str], None] = print
) -> Loaders:
    """The train/val loaders from `data:`, probing `data.batch_size: auto` on `parts` (a resumed run keeps its
    batch) and deriving `trainer.accumulate` from `data.effective_batch_size`; `parts.cfg` is left as it is."""
    cfg = copy.deepcopy(parts.cfg)
    d, t = cfg["data"], cfg["trainer"]
    if len(parts.train_set) == 0:
        raise VisionkitError("The training set is empty; check data.train.")
    labels = class_labels(parts.train_set) if d["sampler"] == "balanced" else None
    if d["batch_size"] == "auto" and resume:  # a resumed run keeps the batch it chose
        adopt_saved_batch(load_checkpoint(resume)["config"], cfg)
    if d["batch_size"] == "auto":
        d["batch_size"], how = choose_batch_size(parts)
        say(f"data.batch_size auto -> {d['batch_size']} ({how})")
    if d["effective_batch_size"]:
        t["accumulate"] = accumulation_for(cfg, dist.world_size())
        effective = d["batch_size"] * t["accumulate"] * dist.world_size()
        say(
            f"trainer.accumulate -> {t['accumulate']} (data.effective_batch_size {d['effective_batch_size']}: "
            f"{d['batch_size']} x {t['accumulate']} x {dist.world_size()} rank(s) = {effective} per update)"
        )
    common = dict(
        batch_size=d["batch_size"],
        seed=t["seed"],
        collate=parts.task.collate,
        num_workers=d["num_workers"],
        rank=dist.rank(),
        world=dist.world_size(),
        pin_memory=parts.device.type == "cuda",
    )
    train, sampler = build_loader(parts.train_set, shuffle=True, train=True, labels=labels, **common)
    val = build_loader(val_set, shuffle=False, train=False, **common)[0] if val_set is not None else None
    updates = math.ceil(len(sampler) / t["accumulate"])
    return Loaders(train, sampler, val, d["batch_size"], t["accumulate"], updates)


def accumulation_for(cfg: Mapping[str, Any], world: int) -> int:
    """`trainer.accumulate` giving at least `data.effective_batch_size` samples per update (ceil division);
    an explicit trainer.accumulate must be 1 or that same value."""
    d, t = cfg["data"], cfg["trainer"]
    wanted, batch = d["effective_batch_size"], d["batch_size"]
    steps = max(1, math.ceil(wanted / (batch * world)))
    if t["accumulate"] not in (1, steps):
        raise ConfigError(
            f"trainer.accumulate={t['accumulate']} conflicts with data.effective_batch_size={wanted}, which needs "
            f"trainer.accumulate={steps} with data.batch_size={batch} on {world} rank(s). Set only one of them."
        )
    return steps


def adopt_saved_batch(saved: Mapping[str, Any], cfg: dict[str, Any]) -> None:
    """On resume: a config asking for `batch_size: auto` (or an effective batch) takes the batch size and
    accumulation the checkpointed run resolved, instead of probing again."""
    sd, st = saved.get("data", {}), saved.get("trainer", {})
    d, t = cfg["data"], cfg["trainer"]
    if d["batch_size"] == "auto" and isinstance(sd.get("batch_size"), int):
        d["batch_size"] = sd["batch_size"]
    same_target = d["effective_batch_size"] and d["effective_batch_size"] == sd.get("effective_batch_size")
    if same_target and t["accumulate"] == 1 and d["batch_size"] == sd.get("batch_size"):
        t["accumulate"] = st.get("accumulate", 1)


# -- data.batch_size: auto ---------------------------------------------------------------------------
def choose_batch_size(trainer: TrialParts) -> tuple[int, str]:
    """Probe batch sizes on rank 0 (every rank gets its answer): the size and a note on how it was chosen."""
    result: tuple[int, str] | None = None
    error: BaseException | None = None
    if dist.is_main():
        try:
            result = probe_batch_size(trainer)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
            error = exc
    result = dist.all_gather_objects(result)[0]
    if error is not None:
        raise error
    if result is None:
        raise VisionkitError("data.batch_size=auto: rank 0 failed to choose a batch size (see its error).")
    return result


def candidate_sizes(cfg: Mapping[str, Any], train_size: int, world: int, cap: int) -> list[int]:
    """Powers of two from START up to the cap, this rank's share of the training set and the per-rank
    effective batch (when set); just that limit when it is below START."""
    limit = min(cap, -(-train_size // world))
    wanted = cfg["data"]["effective_batch_size"]
    if wanted:
        limit = min(limit, -(-wanted // world))
    sizes, size = [], START
    while size <= limit:
        sizes.append(size)
        size *= 2
    return sizes or [max(1, limit)]


def probe_batch_size(trainer: TrialParts) -> tuple[int, str]:
    """Try real training steps at growing batch sizes; the trainer's model, RNGs and task are left as found."""
    cuda = trainer.device.type == "cuda"
    sizes = candidate_sizes(trainer.cfg, len(trainer.train_set), dist.world_size(), GPU_CAP if cuda else CPU_CAP)
    with untouched(trainer):
        pool = [trainer.train_set[i] for i in range(min(POOL, len(trainer.train_set)))]
        trial = Trial(trainer, pool)
        return _probe_memory(trial, sizes) if cuda else _probe_throughput(trial, sizes)


@contextlib.contextmanager
def untouched(trainer: TrialParts) -> Iterator[None]:
    """Run trials that leave no trace: weights, buffers (BatchNorm statistics), train/eval modes, gradients,
    the task's state and the python/numpy/torch/CUDA RNG streams are restored afterwards."""
    module, task = trainer.module, trainer.task
    rng = rng_state()
    # Parameters and every buffer (non-persistent ones too), fetched again by name when restoring.
    saved = {name: t.detach().to("cpu", copy=True) for name, t in _tensors(module)}
    modes = {name: m.training for name, m in module.named_modules()}
    task_state = copy.deepcopy(task.state_dict())
    try:
        yield
    finally:
        with torch.no_grad():
            for name, tensor in _tensors(module):
                tensor.grad = None
                tensor.copy_(saved[name])
        for name, m in module.named_modules():
            m.training = modes[name]
        task.load_state_dict(task_state)
        set_rng_state(rng)


def _tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from ((f"buffer:{name}", b) for name, b in module.named_buffers())


class Trial:
    """Forward and backward of the task's training step on a batch made of pooled training samples."""

    def __init__(self, trainer: TrialParts, pool: list[Any]) -> None:
        self.trainer, self.pool = trainer, pool
        self.task, self.module, self.device = trainer.task, trainer.module, trainer.device
        self.names = list(self.task.optimizer_groups(self.module))
        self.module.train()

    def batch(self, size: int) -> Any:
        """A collated batch of `size` samples on the device."""
        samples = [self.pool[i % len(self.pool)] for i in range(size)]
        return self.task.move_to_device(self.task.collate(samples), self.device)

    def step(self, batch: Any) -> None:
        """One training step's forward and backward (every optimizer's), gradients then dropped."""
        ctx = StepContext(self.module, self.module, self.device, autocast=self.trainer.autocast)
        for name in self.names:
            ctx.optimizer = name
            with self.trainer.autocast():
                out = self.task.training_step(batch, ctx)
            if out is not None:
                out["loss"].backward()
        self.sync()

    def zero(self) -> None:
        """Drop the gradients of the trials."""
        for p in self.module.parameters():
            p.grad = None

    def sync(self) -> None:
        """Wait for the device."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _guarded(run: Callable[[], Any], cleanup: Callable[[], None]) -> Any:
    """run(); None when it ran out of memory (memory given back to the allocator before returning)."""
    failed = False
    try:
        return run()
    except (RuntimeError, MemoryError) as exc:
        if not (_out_of_memory(exc) or isinstance(exc, MemoryError)):
            raise
        failed = True  # leave the except block first: the traceback holds the trial's tensors
    finally:
        cleanup()
    if failed:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return None


def _pair_rates(trial: Trial, sizes: tuple[int, int]) -> dict[int, float]:
    """Images/s of two batch sizes timed in alternation (so a busy machine slows both alike), each from its
    fastest step: at least CPU_ROUNDS_MIN rounds, more while under CPU_SECONDS, at most CPU_ROUNDS_MAX."""
    batches = {size: trial.batch(size) for size in sizes}
    best = dict.fromkeys(sizes, math.inf)
    for batch in batches.values():  # warm-up
        trial.step(batch)
        trial.zero()
    rounds, spent = 0, 0.0
    while rounds < CPU_ROUNDS_MIN or (spent < CPU_SECONDS and rounds < CPU_ROUNDS_MAX):
        for size, batch in batches.items():
            start = time.perf_counter()
            trial.step(batch)
            took = time.perf_counter() - start
            trial.zero()
            best[size], spent = min(best[size], took), spent + took
        rounds += 1
    return {size: size / best[size] for size in sizes}


def _warm_up(trial: Trial, size: int) -> None:
    batch, start, steps = trial.batch(size), time.perf_counter(), 0
    while steps < 3 or (time.perf_counter() - start < CPU_SECONDS / 2 and steps < CPU_ROUNDS_MAX):
        trial.step(batch)
        trial.zero()
        steps += 1


def _probe_throughput(trial: Trial, sizes: list[int]) -> tuple[int, str]:
    """CPU (and MPS): the smallest batch past which doubling raises images/s by less than MIN_GAIN."""
    notes: list[str] = []
    chosen = sizes[-1]
    if len(sizes) > 1:  # the first steps of a process are slow (allocator, kernel selection): not timed
        _guarded(lambda: _warm_up(trial, sizes[0]), trial.zero)
    for small, large in zip(sizes, sizes[1:]):
        rates = _guarded(lambda pair=(small, large): _pair_rates(trial, pair), trial.zero)
        if rates is None:  # out of memory: the smaller size, which ran in the previous pair, is the answer
            if small == sizes[0]:
                raise VisionkitError(f"data.batch_size=auto: a batch of {large} ran out of memory; set it by hand.")
            notes.append(f"{large} out of memory")
            chosen = small
            break
        gain = rates[large] / rates[small]
        notes.append(f"{rates[small]:.0f} at {small} vs {rates[large]:.0f} at {large} ({gain - 1:+.0%})")
        if gain < MIN_GAIN:
            chosen = small
            break
    return chosen, f"{trial.device.type} images/s: {'; '.join(notes) or 'one size to try'}"


def _optimizer_reserve(trial: Trial) -> int:
    """Bytes training will hold besides the step: optimizer state (two tensors per trainable weight, as for
    Adam), an EMA copy of the model when trainer.ema is set, and DDP's gradient buckets under torchrun."""
    trainable = sum(p.numel() * p.element_size() for p in trial.module.parameters() if p.requires_grad)
    state = sum(v.numel() * v.element_size() for v in trial.module.state_dict().values())
    ema = state if trial.trainer.cfg["trainer"]["ema"] else 0
    return 2 * trainable + ema + (trainable if dist.world_size() > 1 else 0)


def largest_fit(fits: Callable[[int], bool], sizes: list[int]) -> tuple[int, int | None]:
    """The largest size that fits (0: none) and the smallest that did not (None: all did): doubling through
    `sizes`, sizes below the first when that one fails, then bisection in multiples of 8 to within 1/8."""
    good, bad = 0, None
    for size in sizes:
        if not fits(size):
            bad = size
            break
        good = size
    if not good:  # the smallest candidate did not fit: try below it
        good = next((s for s in (4, 2, 1) if s < sizes[0] and fits(s)), 0)
    if bad is not None and good >= 8:
        lo, hi = good, bad
        while hi - lo > max(8, lo // 8):
            mid = (lo + hi) // 2 // 8 * 8
            if mid <= lo:
                break
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        good, bad = lo, hi
    return good, bad


def with_headroom(good: int, bad: int | None) -> int:
    """HEADROOM of the largest fit when a memory edge was found (a multiple of 8 from 16 up), else `good`."""
    if bad is None:
        return good
    return max(1, int(good * HEADROOM) // 8 * 8) if good >= 16 else max(1, int(good * HEADROOM))


def _probe_memory(trial: Trial, sizes: list[int]) -> tuple[int, str]:
    """CUDA: the largest batch whose two training steps fit beside the optimizer's reserve, times HEADROOM."""
    device = trial.device
    reserve = torch.empty(_optimizer_reserve(trial), dtype=torch.uint8, device=device)  # held while probing
    peaks: dict[int, float] = {}

    def fits(size: int) -> bool:
        def run() -> float:
            torch.cuda.reset_peak_memory_stats(device)
            batch = trial.batch(size)
            for _ in range(2):  # the second step runs with the first one's gradients allocated
                trial.step(batch)
            del batch
            return torch.cuda.max_memory_allocated(device) / 2**30

        peak = _guarded(run, trial.zero)
        if peak is not None:
            peaks[size] = peak
        return peak is not None

    good, bad = largest_fit(fits, sizes)
    if not good:
        raise VisionkitError(
            f"data.batch_size=auto: even a batch of 1 runs out of GPU memory on {device}; use a smaller "
            "model or image size, trainer.precision=bf16-mixed or fp16-mixed, or another device."
        )
    chosen = with_headroom(good, bad)
    tried = ", ".join(f"{s}: {g:.1f} GiB" for s, g in sorted(peaks.items()))
    edge = f"out of memory at {bad}, {HEADROOM:.0%} of {good}" if bad is not None else f"all fit up to {good}"
    note = f"{reserve.numel() / 2**30:.2f} GiB kept for optimizer state"
    return chosen, f"cuda: {tried}; {edge}; {note}"
