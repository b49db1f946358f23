"""Learning-rate range test: train on successive batches with an exponentially growing learning rate.

The method is Leslie Smith's range test ("Cyclical Learning Rates for Training Neural Networks", 2017)
as popularised by fastai and Lightning's `lr_find`: start at `min_lr`, multiply the learning rate by a
constant factor after every update until `max_lr`, record the training loss, and stop when it diverges
(a bias-corrected exponential moving average of the loss passes `diverge` times its minimum, or the
loss is not finite).

The suggestion is the point of steepest descent of the smoothed loss against log10(lr), looked for
between the first tenth of the points and the smoothed minimum: there the loss falls fastest, safely
below the rate at which training blows up. Unlike fastai and Lightning, the curve the suggestion is
read from is smoothed forward *and* backward (zero phase), over the points up to the minimum of the
running average (beyond it the loss is diverging, and its huge values would leak backwards): a
one-sided average with factor 0.98 lags the raw loss by ~49 updates, which in a 100-update test over
eight decades moves the steepest point up by several decades. When the curve never falls, the
fallback is a tenth of the learning rate at the smoothed minimum (fastai's `lr_min` rule).

The range test trains the trainer's own model with the optimizer, precision, gradient clipping,
accumulation and training step of the config, then restores model, optimizer, scaler, sampler and
RNG states: the model is left as it was and no run folder is created.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from visionkit.config import load_config
from visionkit.engine import distributed as dist
from visionkit.engine.checkpoint import rng_state, set_rng_state
from visionkit.engine.contracts import StepContext
from visionkit.engine.trainer import Trainer
from visionkit.errors import ConfigError


@dataclass
class LRFinderResult:
    """The recorded curve, the suggestion and why the test stopped."""

    lrs: list[float]
    losses: list[float]  # raw training loss of each update
    smoothed: list[float]  # `losses` up to the running average's minimum, smoothed forward and backward
    suggestion: float | None
    rule: str  # how `suggestion` was chosen
    config_lr: float
    stop_reason: str
    min_lr: float
    max_lr: float
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (lr_find.json)."""
        return asdict(self)


def suggest_lr(
    lrs: Sequence[float], smoothed: Sequence[float], skip_start: int | None = None
) -> tuple[float | None, str]:
    """The lr of steepest descent of the smoothed loss vs log10(lr), at most a tenth of the lr at its minimum."""
    if len(lrs) < 3:
        return None, "too few points"
    losses = np.asarray(smoothed, dtype=float)
    x = np.log10(np.asarray(lrs, dtype=float))
    skip = max(1, len(lrs) // 10) if skip_start is None else skip_start
    lowest = int(np.nanargmin(losses))
    tenth = float(lrs[lowest]) / 10
    if lowest - skip >= 2:
        slopes = np.gradient(losses, x)[skip : lowest + 1]
        steepest = float(lrs[skip + int(np.argmin(slopes))])
        # A loss that falls evenly until it diverges has its "steepest" point at the edge: stay a decade below.
        if steepest <= tenth:
            return steepest, "steepest descent of the smoothed loss"
        return tenth, "a tenth of the lr at the smoothed loss minimum (the descent was steepest next to it)"
    return tenth, "a tenth of the lr at the smoothed loss minimum (no descent before it)"


def ema(values: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (one-sided: it lags the values)."""
    out, average = [], 0.0
    for i, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** (i + 1)))
    return out


def zero_phase(values: Sequence[float], beta: float) -> list[float]:
    """The moving average run forward, then backward over the result: smooth, without lag.

    Both ends are extended by point reflection (scipy's `filtfilt` padding, "odd"), so the curve keeps
    its slope at the ends instead of following the last raw points.
    """
    x = np.asarray(values, dtype=float)
    n = min(len(x) - 1, round(3 / (1 - beta)))
    if n < 1:
        return x.tolist()
    padded = np.concatenate([2 * x[0] - x[n:0:-1], x, 2 * x[-1] - x[-2 : -n - 2 : -1]])
    smooth = ema(ema(padded.tolist(), beta)[::-1], beta)[::-1]
    return smooth[n : n + len(x)]


def _batches(trainer: Trainer) -> Iterator[Any]:
    """The training loader's batches, epoch after epoch (each with its own shuffle)."""
    epoch = 0
    while True:
        trainer.sampler.set_epoch(epoch, 0)
        empty = True
        for batch in trainer.train_loader:
            empty = False
            yield batch
        if empty:
            return
        epoch += 1


def check_range(min_lr: float, max_lr: float, steps: int) -> None:
    """Refuse a range the test cannot run (ConfigError naming the option)."""
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"--min-lr {min_lr:g} and --max-lr {max_lr:g}: need 0 < min-lr < max-lr.")
    if steps < 5:
        raise ConfigError(f"--steps {steps}: the range test needs at least 5 steps (100 is usual).")


def lr_range_test(
    trainer: Trainer,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.9,
    diverge: float = 4.0,
) -> LRFinderResult:
    """Run the range test on a set-up Trainer (`setup()` done) and restore its model and optimizer after."""
    check_range(min_lr, max_lr, steps)
    if len(trainer.optimizers) != 1:
        raise ConfigError(
            f"Task '{trainer.cfg['task']}' trains {len(trainer.optimizers)} optimizers "
            f"({', '.join(trainer.optimizers)}); the LR finder supports one optimizer for now. Set "
            "optimizer.lr and the task's per-optimizer learning rates by hand for this task."
        )
    if dist.is_distributed():
        raise ConfigError("Run the LR finder in a single process (python tools/tune.py lr ...), not under torchrun.")
    name, opt = next(iter(trainer.optimizers.items()))
    module, cfg = trainer.module, trainer.cfg
    base_lr = float(cfg["optimizer"]["lr"])
    # Keep each parameter group's ratio to optimizer.lr (layer-wise learning rates, lr_scale).
    # OneCycleLR rewrites initial_lr to max_lr / div_factor: a group's unscheduled lr is its max_lr then.
    ratios = [g.get("max_lr", g.get("initial_lr", g["lr"])) / base_lr for g in opt.param_groups]
    saved = {
        "model": copy.deepcopy(module.state_dict()),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "scaler": copy.deepcopy(trainer.scaler.state_dict()),
        "rng": rng_state(),
        "training": module.training,
        "sampler": (trainer.sampler.epoch, trainer.sampler.start),
    }
    accumulate = cfg["trainer"]["accumulate"]
    # The run's own update (precision, clipping, accumulation, the finite check), with the lr set here instead of
    # by the schedule; a non-finite loss skips the update, and ends the test below.
    updater = trainer.updater.replace(
        schedulers=None, finite_check="update", max_bad_steps=None, warn=_quiet, keep_outputs=True
    )
    ctx = StepContext(trainer.model, module, trainer.device, optimizer=name, autocast=trainer.autocast)
    factor = (max_lr / min_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    average, best, reason = 0.0, math.inf, f"reached --max-lr {max_lr:g}"
    batches = _batches(trainer)
    try:
        module.train()
        opt.zero_grad(set_to_none=True)
        for step in range(steps):
            lr = min_lr * factor**step
            for group, ratio in zip(opt.param_groups, ratios):
                group["lr"] = lr * ratio
            ctx.step, counted = step, 0
            for i in range(accumulate):
                batch = next(batches, None)
                if batch is None:
                    raise ConfigError("The training loader gave no batches; check data.train.")
                batch = trainer.task.move_to_device(batch, trainer.device)
                stepped = updater.train_batch(batch, ctx, ends_update=i == accumulate - 1)
                counted += updater.last_outputs.get(name) is not None  # None: the task skipped this batch
            summed = updater.take_losses().get("loss")
            if not counted or summed is None:
                continue
            value = float(summed) / counted
            if not math.isfinite(value):
                reason = f"the loss was not finite at lr {lr:.3g}"
                break
            if not stepped:  # the task skipped a batch of the update, so nothing trained at this lr
                continue
            average = smoothing * average + (1 - smoothing) * value
            smooth = average / (1 - smoothing ** (len(losses) + 1))
            lrs.append(lr)
            losses.append(value)
            best = min(best, smooth)
            if smooth > diverge * best:
                reason = f"the smoothed loss passed {diverge:g}x its minimum at lr {lr:.3g}"
                break
    finally:
        module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        trainer.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        module.train(saved["training"])
        trainer.sampler.set_epoch(*saved["sampler"])
        opt.zero_grad(set_to_none=True)
    end = int(np.argmin(ema(losses, smoothing))) + 1 if losses else 0
    smoothed = zero_phase(losses[:end], smoothing)
    suggestion, rule = suggest_lr(lrs[:end], smoothed)
    return LRFinderResult(lrs, losses, smoothed, suggestion, rule, base_lr, reason, min_lr, max_lr, steps)


def _quiet(message: str) -> None:
    """The range test reports a non-finite loss as its stop reason, not as a warning."""


def plot_lr_find(result: LRFinderResult, path: str | Path, title: str = "") -> None:
    """Draw the raw and smoothed loss against the learning rate (log axis), the suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))  # its own Agg canvas: no pyplot state
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, lw=0.8, alpha=0.35, color="tab:blue", label="loss")
    ax.plot(result.lrs[: len(result.smoothed)], result.smoothed, lw=1.8, color="tab:blue", label="smoothed loss")
    ax.axvline(result.config_lr, color="gray", ls="--", lw=1, label=f"config lr {result.config_lr:.3g}")
    if result.suggestion is not None:
        marked = np.log(result.lrs[: len(result.smoothed)])
        i = int(np.argmin(np.abs(marked - math.log(result.suggestion))))
        ax.axvline(result.suggestion, color="tab:red", lw=1)
        label = f"suggested {result.suggestion:.3g}"
        ax.plot([result.suggestion], [result.smoothed[i]], "o", color="tab:red", label=label)
    ax.set_xscale("log")
    if result.smoothed:
        low = min(min(result.smoothed), min(result.losses[: len(result.smoothed)]))
        start = result.smoothed[0]
        top = max(start, low) + 0.25 * abs(start - low) + 1e-3
        ax.set_ylim(low - 0.1 * abs(top - low) - 1e-3, top)
    ax.set(xlabel="learning rate", ylabel="training loss", title=title or "LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def default_out_dir(task: str) -> Path:
    """runs/<task>/lr_find-<time> (made unique)."""
    base = Path("runs") / task / datetime.now().strftime("lr_find-%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def find_lr(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    task: str | None = None,
    out_dir: str | Path | None = None,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.9,
    diverge: float = 4.0,
) -> tuple[LRFinderResult, Path]:
    """Build a config's trainer without a run folder, run the range test, write lr_find.png/json to out_dir."""
    check_range(min_lr, max_lr, steps)
    if not 0 < smoothing < 1:
        raise ConfigError(f"--smoothing {smoothing}: the moving-average factor must be in (0, 1), e.g. 0.9.")
    cfg = load_config(config, list(overrides), task=task)
    with Trainer(cfg, write=False) as trainer:  # everything the run would build, without its run folder
        result = lr_range_test(trainer, min_lr, max_lr, steps, smoothing, diverge)
    out = Path(out_dir) if out_dir is not None else default_out_dir(cfg["task"])
    out.mkdir(parents=True, exist_ok=True)
    result.extra = {"task": cfg["task"], "model": cfg["model"].get("name"), "optimizer": cfg["optimizer"]["name"]}
    (out / "lr_find.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    title = f"LR range test: {cfg['task']}, {cfg['model'].get('name')}, {cfg['optimizer']['name']}"
    plot_lr_find(result, out / "lr_find.png", title)
    return result, out
