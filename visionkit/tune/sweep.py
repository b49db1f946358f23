"""Hyper-parameter sweeps on Optuna: every trial is a normal run, pruned from its validations.

A sweep is an Optuna study in a database (sqlite under the output folder by default, or any
SQLAlchemy URL several machines share). Each worker loops: fail stale trials (heartbeats from other
machines; on this one, trials whose worker process is gone), queue again the trials a crash or
Ctrl-C interrupted, and start one more trial while fewer than `--trials` are finished or running,
so re-running the same command resumes the study up to N trials in total. Trials that fail with a
user error (a bad combination of values, a diverging loss) are recorded as failed with their message
and count towards N; interrupted ones are run again with the same values.

Defaults: the median pruner compares a trial's validations with the completed trials' from a third
of the epochs on, once a quarter of the trials (2 to 5) have completed; TPE models the space after a
third of the trials (2 to 10) were drawn at random. The sampler is seeded with the seed plus the
number of trials already in the study (and the worker's index), so a resumed or parallel worker
does not redraw the first trials' values.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionkit.config import load_config
from visionkit.engine import runs
from visionkit.engine.events import Callback, LoopState
from visionkit.engine.metrics import monitor_mode
from visionkit.engine.protocol import build_task
from visionkit.errors import ConfigError, VisionkitError, require
from visionkit.plugins import import_plugin
from visionkit.registry import TASKS
from visionkit.tune.results import write_results
from visionkit.tune.space import Distribution, check_space, load_space, trial_config

# Keys that do not change what a trial computes: a resumed or shared study may differ in them.
FREE_KEYS = ("work_dir", "plugins", "trainer.device", "trainer.num_threads", "trainer.progress", "trainer.log_every",
             "trainer.checkpoint_every", "data.num_workers")  # fmt: skip
HEARTBEAT_S, GRACE_S = 30, 120


def require_optuna() -> Any:
    """Import Optuna, or stop with a message naming the `tune` extra that installs it."""
    return require("optuna", "tools/tune.py sweep")


class PruningCallback(Callback):
    """Report the monitored metric to an Optuna trial after each validation; stop the run when it is pruned."""

    order = 30

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.reported: set[int] = set()
        self.pruned_at: tuple[int, float] | None = None

    def on_validation_end(self, state: LoopState, record: dict[str, Any]) -> None:
        """trial.report(value, epoch); `should_prune` ends the run after this validation."""
        epoch, value = int(record["epoch"]), record.get(self.monitor)
        if value is None or epoch in self.reported:
            return
        self.reported.add(epoch)
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_at = (epoch, float(value))
            state.stop = True
            state.stop_reason = f"pruned by the sweep at epoch {epoch}: {self.monitor} {value:.4f}"


@dataclass
class SweepSpec:
    """Everything a sweep worker needs (plain values, so spawned processes get it pickled)."""

    base: dict[str, Any]
    space: dict[str, Distribution]
    trials: int
    url: str
    study: str
    out: Path
    monitor: str
    mode: str
    seed: int = 0
    startup_trials: int | None = None
    pruner: str = "median"
    prune_startup: int | None = None  # None: a quarter of the trials, 2 to 5
    prune_warmup: int | None = None  # None: a third of trainer.epochs (at least 1)
    plugins: list[str] = field(default_factory=list)


@contextlib.contextmanager
def quiet_optuna(optuna: Any) -> Iterator[None]:
    """Optuna's own log lines off (the sweep prints its own); its experimental warnings too."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def storage_url(storage: str | None, out: Path) -> str:
    """A SQLAlchemy URL: as given, a file path as sqlite, or <out>/study.db."""
    if storage and "://" in storage:
        return storage
    path = Path(storage) if storage else out / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def open_study(spec: SweepSpec, worker: int = 0, create: bool = False) -> Any:
    """The study in its storage, with this worker's sampler and pruner (created when `create`)."""
    optuna = require_optuna()
    engine = {"connect_args": {"timeout": 60}} if spec.url.startswith("sqlite") else {}
    try:
        storage = optuna.storages.RDBStorage(
            spec.url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
        )
    except Exception as exc:  # SQLAlchemy: bad URL, driver missing, server unreachable
        raise ConfigError(f"--storage {spec.url}: cannot open the study database ({exc}).") from None
    if create:
        direction = "maximize" if spec.mode == "max" else "minimize"
        optuna.create_study(study_name=spec.study, storage=storage, direction=direction, load_if_exists=True)
    known = optuna.load_study(study_name=spec.study, storage=storage)
    startup = spec.startup_trials if spec.startup_trials is not None else min(10, max(2, spec.trials // 3))
    sampler = optuna.samplers.TPESampler(seed=spec.seed + len(known.trials) + 7919 * worker, n_startup_trials=startup)
    if spec.pruner == "none":
        pruner = optuna.pruners.NopPruner()
    else:
        warmup = spec.prune_warmup if spec.prune_warmup is not None else max(1, spec.base["trainer"]["epochs"] // 3)
        after = spec.prune_startup if spec.prune_startup is not None else max(2, min(5, spec.trials // 4))
        pruner = optuna.pruners.MedianPruner(n_startup_trials=after, n_warmup_steps=warmup)
    return optuna.load_study(study_name=spec.study, storage=storage, sampler=sampler, pruner=pruner)


def _comparable(cfg: Mapping[str, Any], skip: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Leaf keys of a config, without `skip` keys and their children, as JSON-safe values."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        if isinstance(value, Mapping) and value:
            out.update(_comparable(value, skip, path + "."))
        else:
            out[path] = json.loads(json.dumps(value, default=str))
    return out


def check_study(study: Any, spec: SweepSpec) -> None:
    """Record what the study searches on first use; on resume, refuse a different config, space or monitor."""
    mine = {
        "task": spec.base["task"],
        "monitor": spec.monitor,
        "mode": spec.mode,
        "space": {k: d.to_dict() for k, d in spec.space.items()},
        "config": _comparable(spec.base, [*FREE_KEYS, *spec.space]),
    }
    saved = study.user_attrs.get("visionkit")
    if saved is None:
        if any(spec.out.glob("trial_*")) and not study.trials:
            raise ConfigError(
                f"--out '{spec.out}' already holds trial folders of another study, but study '{spec.study}' in "
                f"{spec.url} is new. Re-run with the --storage/--study of those trials, or choose another --out."
            )
        study.set_user_attr("visionkit", mine)
        return
    what = [k for k in ("task", "monitor", "mode", "space") if saved.get(k) != mine[k]]
    keys = sorted(set(saved["config"]) | set(mine["config"]))
    changed = [k for k in keys if saved["config"].get(k) != mine["config"].get(k)]
    if what or changed:
        details = "; ".join(
            [f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in what]
            + [f"{k}: {saved['config'].get(k)!r} -> {mine['config'].get(k)!r}" for k in changed[:5]]
        )
        raise ConfigError(
            f"Study '{spec.study}' in {spec.url} was started with other settings ({details}). Resume it with the "
            "same config, overrides and --space, or start a new study with --study NAME (or another --out)."
        )


def finished_count(study: Any) -> int:
    """Trials that count towards N: complete, pruned, failed with a recorded error, or running now."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in done or (t.state == TrialState.FAIL and "error" in t.user_attrs) for t in study.trials)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_local_trials(study: Any) -> None:
    """Fail the running trials whose worker process on this machine is gone (a crash; heartbeats catch the rest)."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        name, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL)


def requeue_interrupted(study: Any) -> None:
    """Queue again, with the same values, each failed trial that has no recorded error (a crash, Ctrl-C)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and "error" not in t.user_attrs and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


class Objective:
    """One trial: the config with the trial's values, trained as a normal run in <out>/trial_<n>/."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec

    def __call__(self, trial: Any) -> float:
        """Train; return the best monitored value, raise TrialPruned or record the user error."""
        spec = self.spec
        values = {key: dist.suggest(trial) for key, dist in spec.space.items()}
        run_dir = spec.out / f"trial_{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        print(f"\n== trial {trial.number}: {shown}", flush=True)
        callback = PruningCallback(trial, spec.monitor)
        try:
            cfg = trial_config(spec.base, values, str(run_dir))
            result = runs.train(runs.resolve_run(cfg), callbacks=[callback])
            value = result.summary.get("best_value")
            trial.set_user_attr("epochs", result.summary.get("epochs"))
            trial.set_user_attr("best_metrics", result.best)
            if callback.pruned_at is None and (value is None or not math.isfinite(value)):
                raise VisionkitError(f"{spec.monitor} was {value} (no finite validation value).")
        except Exception as exc:  # noqa: BLE001 - a user error, out of memory, a diverged trial: record it, go on
            text = str(exc).splitlines()[0] if str(exc) else ""
            message = text if isinstance(exc, VisionkitError) else f"{type(exc).__name__}: {text}"
            trial.set_user_attr("error", message)
            print(f"== trial {trial.number} failed: {message}", flush=True)
            raise TrialFailed(message) from None
        if callback.pruned_at is not None:
            epoch, at = callback.pruned_at
            print(f"== trial {trial.number} pruned at epoch {epoch} ({spec.monitor} {at:.4f})", flush=True)
            raise require_optuna().TrialPruned(f"epoch {epoch}: {spec.monitor} {at:.4f}")
        print(f"== trial {trial.number} complete: best {spec.monitor} {value:.4f}", flush=True)
        return float(value)


class TrialFailed(Exception):
    """A trial ended with a user error; Optuna records it as failed and the sweep goes on."""


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def work(spec: SweepSpec, worker: int = 0) -> None:
    """A sweep worker: run trials until the study holds `spec.trials` finished (or running) ones."""
    optuna = require_optuna()
    for name in spec.plugins:
        import_plugin(name)
    with quiet_optuna(optuna):
        study = open_study(spec, worker)
        objective = Objective(spec)
        while True:
            optuna.storages.fail_stale_trials(study)
            fail_dead_local_trials(study)
            requeue_interrupted(study)
            if finished_count(study) >= spec.trials:
                return
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)


def run_workers(spec: SweepSpec, jobs: int) -> None:
    """Run the sweep in this process (jobs=1) or in `jobs` spawned processes sharing the storage."""
    if jobs == 1:
        work(spec)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=work, args=(spec, i), name=f"sweep-worker-{i}") for i in range(jobs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.name for p in procs if p.exitcode]
    if bad:
        raise VisionkitError(f"sweep workers {', '.join(bad)} stopped with an error (see above); re-run to resume.")


def sweep_spec(
    config: str | Path | Mapping[str, Any] | None,
    overrides: Sequence[str],
    space_file: str | Path,
    trials: int,
    *,
    task: str | None = None,
    storage: str | None = None,
    study: str | None = None,
    out_dir: str | Path | None = None,
    **options: Any,
) -> SweepSpec:
    """Load and check the base config and the space; choose the study name, output folder and storage."""
    if trials < 1:
        raise ConfigError(f"--trials {trials}: give the number of trials the study should hold (>= 1).")
    base = load_config(config, list(overrides), task=task)
    build_task(base)  # the base config's components are checked before any trial
    if base["data"].get("val") is None:
        raise ConfigError("A sweep compares trials on validation data: set data.val in the config.")
    space = load_space(space_file)
    check_space(base, space, space_file)
    task_obj = TASKS.get(base["task"])(base)
    monitor = base["trainer"]["monitor"] or task_obj.monitor
    mode = base["trainer"]["monitor_mode"] or monitor_mode(monitor, task_obj)
    stem = Path(str(config)).stem if isinstance(config, (str, Path)) else "default"
    name = study or f"{base['task']}-{stem}"
    out = Path(out_dir) if out_dir else Path("runs") / base["task"] / f"sweep-{name}"
    out.mkdir(parents=True, exist_ok=True)
    seed = options.pop("seed", None)
    seed = base["trainer"]["seed"] if seed is None else seed
    url = storage_url(storage, out)
    return SweepSpec(base, space, trials, url, name, out, monitor, mode, seed=seed, **options)


def run_sweep(
    config: str | Path | Mapping[str, Any] | None,
    overrides: Sequence[str],
    space_file: str | Path,
    trials: int,
    *,
    jobs: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """Run (or resume) a sweep to `trials` trials; write the results table, best config and plot; return them."""
    optuna = require_optuna()
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give the number of worker processes (>= 1).")
    spec = sweep_spec(config, overrides, space_file, trials, **options)
    with quiet_optuna(optuna):
        study = open_study(spec, create=True)
        check_study(study, spec)
    before = finished_count(study)
    print(f"study '{spec.study}' in {spec.url}: {before} trial(s) so far, running up to {trials}; "
          f"optimizing {spec.monitor} ({spec.mode}); trials in {spec.out}", flush=True)  # fmt: skip
    try:
        run_workers(spec, jobs)
    finally:
        with quiet_optuna(optuna):
            summary = write_results(open_study(spec), spec)
    return summary
