"""A run resolved once: its config, the checkpoint it resumes and its folder, then trained.

`resolve_run` loads the config exactly once (from the file or task given, or from the checkpoint a resume
continues), finds the checkpoint of `--resume auto|PATH` (a torchrun restart included), checks what a resume
may change, and fixes the run folder; `train` hands that to the trainer. `visionkit.train` and the sweep
trials both go through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionkit.config import get, load_config, parse_overrides
from visionkit.engine.batching import adopt_saved_batch
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.engine.elastic import elastic_resume
from visionkit.engine.protocol import build_task
from visionkit.engine.report import RunResult
from visionkit.engine.trainer import Trainer
from visionkit.errors import ConfigError
from visionkit.plugins import record_plugins
from visionkit.registry import TASKS

# Keys a resumed run may change: they extend or re-run the same training, not a different one.
RESUMABLE = (
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.val_every",
    "trainer.early_stop_patience",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.progress",
    "trainer.device",
    "trainer.max_bad_steps",
    "trainer.finite_check",
    "trainer.dist_timeout",
    "data.num_workers",
    "work_dir",
    "plugins",
)


@dataclass
class RunPlan:
    """What a run is, resolved before anything is built: the full config, the checkpoint to resume, the folder."""

    cfg: dict[str, Any]
    resume: Path | None
    run_dir: Path | None  # None: runs/<task>/<time>, chosen by the trainer (rank 0's name under torchrun)
    complete: str = ""  # a resumed run with nothing left to train: what to tell the user


def resolve_run(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    task: str | None = None,
    work_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> RunPlan:
    """Load the config once, find the checkpoint a resume continues, check what it changes, fix the folder."""
    overrides = list(overrides)
    given = load_config(config, overrides, task=task) if config is not None or (task and not resume) else None
    task_name = given["task"] if given else TASKS.canonical(task) if task else None
    chosen = str(work_dir) if work_dir is not None else _override_work_dir(overrides)
    explicit = resume is not None and str(resume) != "auto"
    if chosen is None and not explicit and given is not None and given.get("work_dir"):
        chosen = str(given["work_dir"])  # an explicit resume continues in its checkpoint's folder instead
    resume, reuse = elastic_resume(resume, chosen, task_name or "")  # a torchrun restart resumes its launch's run
    if reuse is not None and chosen is None:
        work_dir = chosen = str(reuse)
    checkpoint = find_resume(resume, chosen, task_name) if resume else None
    if resume is not None and str(resume) == "auto" and checkpoint is None and os.environ.get("RANK", "0") == "0":
        print("--resume auto: no checkpoints/last.pt to resume; starting a new run", flush=True)
    complete = ""
    if checkpoint is not None:
        cfg, counters = _resumed_config(checkpoint, given, overrides, task)
        complete = _complete(checkpoint, counters, cfg)
        if work_dir is None and _override_work_dir(overrides) is None:  # a resume continues in its own folder
            cfg["work_dir"] = str(Path(checkpoint).resolve().parent.parent)
    else:
        cfg = given if given is not None else load_config(None, overrides, task=task)
    build_task(cfg)  # every component checked before the trainer opens anything
    cfg["plugins"] = record_plugins(cfg.get("plugins"), cfg)  # imported plugins it uses: its checkpoint loads them
    if work_dir is not None:
        cfg["work_dir"] = str(work_dir)
    if checkpoint is None and cfg.get("work_dir") and _holds_run(Path(cfg["work_dir"])):
        raise ConfigError(
            f"The work dir '{cfg['work_dir']}' already holds a run (checkpoints/last.pt). Continue it with "
            "--resume auto (resume='auto'), or choose another --work-dir for a new run."
        )
    return RunPlan(cfg, checkpoint, Path(cfg["work_dir"]) if cfg.get("work_dir") else None, complete)


def train(plan: RunPlan, callbacks: Sequence[Any] = ()) -> RunResult:
    """Train a resolved run (a complete one is left as it is: its result is read back)."""
    if plan.complete and plan.resume is not None:
        if os.environ.get("RANK", "0") == "0":
            print(plan.complete, flush=True)
        return finished_result(plan.resume.resolve().parent.parent)
    return Trainer(plan.cfg, resume=plan.resume, callbacks=callbacks, run_dir=plan.run_dir).fit()


def _complete(checkpoint: Path, counters: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """The message for a resume with nothing left to train (trainer.epochs and max_steps reached), else ''."""
    t, epoch, step = cfg["trainer"], int(counters.get("epoch", 0)), int(counters.get("step", 0))
    done = epoch >= t["epochs"] or (t["max_steps"] is not None and step >= t["max_steps"])
    if not done:
        return ""
    run_dir = checkpoint.resolve().parent.parent
    return (
        f"The run in {run_dir} is complete ({epoch} epochs, {step} updates; trainer.epochs {t['epochs']}, "
        f"trainer.max_steps {t['max_steps']}): nothing to resume, nothing changed. Extend it with --resume auto "
        f"--work-dir {run_dir} trainer.epochs={max(epoch, t['epochs']) * 2} (or a higher trainer.max_steps), or start "
        "a new run."
    )


def finished_result(run_dir: Path) -> RunResult:
    """The result of a finished run, read back from its summary.json."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    best = run_dir / "checkpoints" / "best.pt"
    final, best_metrics = summary.get("final", {}), summary.get("best", {})
    return RunResult(run_dir, final, best_metrics, best if best.is_file() else None, summary)


def _resumed_config(
    checkpoint: Path, given: dict[str, Any] | None, overrides: list[str], task: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config a resume trains with (the given one, or the checkpoint's with the overrides; changes checked)
    and the checkpoint's loop counters."""
    ckpt = load_checkpoint(checkpoint)
    saved = ckpt["config"]
    if task is not None and TASKS.canonical(task) != TASKS.canonical(saved["task"]):
        raise ConfigError(
            f"--task {task} does not match the checkpoint to resume, '{checkpoint}', which is a "
            f"'{saved['task']}' run. Leave out --task (a resumed run keeps its task), or start a new "
            f"{task} run without --resume."
        )
    before_no_decay = "decay_norm_and_bias" not in saved.get("optimizer", {})
    if before_no_decay:  # saved before biases and norms went undecayed: it keeps decaying them
        saved["optimizer"] = {**saved.get("optimizer", {}), "decay_norm_and_bias": True}
    recorded = ckpt.get("plugins") if isinstance(ckpt.get("plugins"), list) else []
    where = f"Checkpoint '{checkpoint}'"  # its plugins are information: resuming never imports or calls them
    cfg = given if given is not None else load_config(saved, overrides, source=where, plugin_info=recorded)
    if before_no_decay and not any(o.startswith("optimizer.decay_norm_and_bias=") for o in overrides):
        cfg["optimizer"]["decay_norm_and_bias"] = True
    adopt_saved_batch(saved, cfg)  # `batch_size: auto` resumes with the batch the run chose
    check_resume_changes(saved, cfg)
    return cfg, {k: ckpt.get(k, 0) for k in ("step", "epoch", "batch_in_epoch")}


def _override_work_dir(overrides: Sequence[str]) -> str | None:
    """The value of a `work_dir=` override, if one is given."""
    value = parse_overrides([o for o in overrides if o.startswith("work_dir=")]).get("work_dir")
    return str(value) if value is not None else None


def _holds_run(work_dir: Path) -> bool:
    """True when the folder holds a run's last.pt (False for a path that cannot be looked at; the trainer says why)."""
    try:
        return (work_dir / "checkpoints" / "last.pt").is_file()
    except (OSError, ValueError):
        return False


def find_resume(resume: str | Path, work_dir: str | None, task: str | None) -> Path | None:
    """The checkpoint `--resume auto|PATH` points at (None for auto with nothing to resume)."""
    if str(resume) != "auto":
        path = Path(resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ConfigError(f"--resume {resume}: no checkpoint there. Give a .pt file, a run dir, or 'auto'.")
        return path
    if work_dir is None:
        runs = sorted((Path("runs") / task).glob("*/checkpoints/last.pt")) if task else []
        return max(runs, key=lambda p: p.stat().st_mtime) if runs else None
    path = Path(work_dir) / "checkpoints" / "last.pt"
    return path if path.is_file() else None


def check_resume_changes(saved: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """Refuse config changes that a resumed run cannot honour (everything but RESUMABLE keys)."""
    changed = [k for k in _leaf_keys(cfg) | _leaf_keys(saved) if get(cfg, k) != get(saved, k)]
    blocked = sorted(k for k in changed if not any(k == r or k.startswith(r + ".") for r in RESUMABLE))
    if blocked:
        details = "; ".join(f"{k}: {get(saved, k)!r} -> {get(cfg, k)!r}" for k in blocked[:5])
        raise ConfigError(
            f"A resumed run cannot change {', '.join(blocked)} ({details}). A resumed run may only change "
            f"{', '.join(RESUMABLE)}; start a new run (without --resume) to train with other settings."
        )


def _leaf_keys(cfg: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in cfg.items():
        if isinstance(v, Mapping) and v:
            keys |= _leaf_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys
