"""The task-agnostic trainer: one loop for every registered task.

`Trainer(cfg).fit()` trains; `with Trainer(cfg, write=False) as trainer:` sets a run up without training it
(the dry run and the LR finder): the context owns the process group it opened and the loader workers.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from visionkit.config import dump_config
from visionkit.data import absolute_data_paths
from visionkit.engine import distributed as dist
from visionkit.engine import loggers  # noqa: F401 - registers the loggers a config can name (csv, tensorboard)
from visionkit.engine.batching import build_loaders
from visionkit.engine.callbacks import (
    EMA,
    Checkpointer,
    EarlyStopping,
    ProgressBar,
    RunFiles,
    Validator,
    unfreeze_callbacks,
)
from visionkit.engine.checkpoint import check_same_facts, load_checkpoint, rng_state, save_atomic, set_rng_state
from visionkit.engine.contracts import StepContext, Task
from visionkit.engine.elastic import mark_run_dir
from visionkit.engine.events import CallbackList, LoopState
from visionkit.engine.extend import restore_schedules
from visionkit.engine.finetune import apply_freeze
from visionkit.engine.inference import component_origins
from visionkit.engine.interrupts import GracefulStop
from visionkit.engine.loader import close_workers
from visionkit.engine.metrics import Evaluator, improves, monitor_mode, run_validation
from visionkit.engine.optim import build_optimizer, build_scheduler
from visionkit.engine.precision import autocast_factory, make_scaler, resolve_precision, select_device
from visionkit.engine.protocol import build_task
from visionkit.engine.report import RunResult, check_run_dir, default_run_dir, prepare_run_dir, run_summary
from visionkit.engine.shape_errors import translated_shape_errors
from visionkit.engine.sizing import RunClock, sizing_warnings
from visionkit.engine.update import TrainingError as TrainingError  # raised by the update; importable from here
from visionkit.engine.update import Updater, finite_check_for
from visionkit.engine.weights import load_model_weights, skip_pretrained
from visionkit.errors import ConfigError, VisionkitError, warn
from visionkit.plugins import describe as describe_plugin
from visionkit.registry import CALLBACKS


class Trainer:
    """Trains `cfg["task"]`: builds it from the registries, runs the loop, validates, checkpoints."""

    def __init__(
        self,
        cfg: dict[str, Any],
        resume: str | Path | None = None,
        callbacks: Sequence[Any] = (),
        write: bool = True,
        run_dir: str | Path | None = None,
    ) -> None:
        self.cfg, self.resume, self.write = cfg, resume, write  # write=False: no run folder (dry run, LR finder)
        self.given_callbacks = list(callbacks)  # the caller's, run after the built-in ones of the same order
        self.given_run_dir = Path(run_dir) if run_dir is not None else None
        t = cfg["trainer"]
        self.device = select_device(t["device"])
        if t["num_threads"] and self.device.type == "cpu":
            torch.set_num_threads(t["num_threads"])
        self.precision = resolve_precision(t["precision"], self.device)
        self.autocast = autocast_factory(self.precision, self.device)
        self.owns_process_group = self.is_set_up = False
        self.last_extras: dict[str, Any] = {}  # the last validation's tables (summary.json)
        self.started = time.perf_counter()
        self.wall_before = 0.0  # training seconds of the earlier processes of a resumed run (up to its checkpoint)
        self.batches_seen = 0  # this rank's training batches in this process (reported per rank)
        self.clock = RunClock()  # the run-time estimate, printed once per process
        self.continuation: dict[str, Any] | None = None  # set when a resume extended the run

    def __enter__(self) -> Trainer:
        self.setup()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Open the process group, build data, model, optimizers and callbacks, restore a resume (once).

        A set-up that fails leaves nothing open (the process group it opened, loader workers)."""
        if self.is_set_up:
            return
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        self.is_set_up = True

    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg["trainer"]
        self.owns_process_group = dist.init_process_group(self.device, t["dist_timeout"])
        torch.manual_seed(t["seed"])
        random.seed(t["seed"])
        np.random.seed(t["seed"])
        run_dir = self.given_run_dir or default_run_dir(cfg) if dist.is_main() else None
        self.run_dir = Path(dist.all_gather_objects(str(run_dir))[0])  # every rank uses rank 0's folder
        if dist.is_main() and self.write:
            check_run_dir(self.run_dir)  # a folder that cannot be written fails here, before any work
        self.task: Task = build_task(cfg)
        self.train_set = self.task.build_dataset("train")
        self.val_set = self.task.build_dataset("val") if cfg["data"].get("val") is not None else None
        # What the data tells (classes, channels, ...) is a value handed to the builders and saved with checkpoints.
        self.facts = self.task.facts = self.task.data_facts(self.train_set, self.val_set)
        with skip_pretrained() if self.resume else contextlib.nullcontext():  # a resume loads its own weights
            self.module: nn.Module = self.task.build_model(self.facts).to(self.device)
        apply_freeze(self.module, cfg)  # model.freeze patterns (trainer.unfreeze_at lifts them)
        if t["channels_last"]:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.task.setup(self.module, self.device)
        with torch.random.fork_rng(devices=[]):  # metric networks must not change the training run's RNG
            self.evaluator = Evaluator(self.task.build_metrics(self.facts), self.device)
        self.monitor = t["monitor"] or self.task.monitor
        self.monitor_mode = t["monitor_mode"] or monitor_mode(self.monitor, self.task)
        loaders = build_loaders(self, self.val_set, self.resume, self.print)  # data.batch_size may be 'auto'
        cfg["data"]["batch_size"], t["accumulate"] = loaders.batch_size, loaders.accumulate  # config.yaml says so
        absolute_data_paths(cfg)  # config.yaml and the checkpoints work from any folder
        self.train_loader, self.sampler, self.val_loader = loaders.train, loaders.sampler, loaders.val
        self.updates_per_epoch = loaders.updates_per_epoch
        if dist.is_main() and self.write:
            self.lock = prepare_run_dir(self.run_dir, new_run=not self.resume)  # one run writes a folder at a time
            dump_config(cfg, self.run_dir / "config.yaml")
            mark_run_dir(self.run_dir)  # a torchrun restart finds its run dir by this marker
        self._build_optimizers()
        self.ema = EMA(self.module, t["ema"]) if t["ema"] else None
        self.state = LoopState(cfg, self.run_dir, dist.is_main(), t["epochs"], self.monitor, self.monitor_mode)
        self.state.max_steps, self.state.batches_per_epoch = t["max_steps"], len(self.sampler)
        self.callbacks = self._build_callbacks()
        self._check_monitor()
        if self.resume:
            self._restore(load_checkpoint(self.resume))
        self.model: nn.Module = self.module
        ddp = None
        if dist.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = self.model = DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=self.task.find_unused_parameters
            )
        if t["compile"]:
            self.model = torch.compile(self.model)
        self.updater = Updater(
            self.task, self.groups, self.optimizers, self.schedulers, self.scaler, self.autocast, self.device,
            accumulate=t["accumulate"], clip_grad=t["clip_grad"], ddp=ddp, max_bad_steps=t["max_bad_steps"],
            finite_check=finite_check_for(t["finite_check"], self.device), warn=self.print,
        )  # fmt: skip

    def close(self) -> None:
        """Stop the loader workers and leave the process group this trainer opened (a caller's stays open)."""
        close_workers(getattr(self, "train_loader", None), getattr(self, "val_loader", None))
        if getattr(self, "lock", None) is not None:
            self.lock.release()
        if self.owns_process_group:
            dist.destroy_process_group()
            self.owns_process_group = False

    def _build_optimizers(self) -> None:
        """The task's optimizer groups, one torch optimizer and one per-update schedule each, and the scaler."""
        cfg = self.cfg
        self.groups = self.task.optimizer_groups(self.module)
        names = {p: n for n, p in self.module.named_parameters()}
        self.optimizers = {}
        for name, group in self.groups.items():
            group.params = list(group.params)
            self.optimizers[name] = build_optimizer({**cfg["optimizer"], **group.overrides}, group.params, names)
        self.horizon = cfg["trainer"]["epochs"] * self.updates_per_epoch
        self.schedulers = {n: build_scheduler(cfg["scheduler"], o, self.horizon) for n, o in self.optimizers.items()}
        self.scaler = make_scaler(self.precision, self.device)

    def _build_callbacks(self) -> CallbackList:
        """The built-in callbacks, then `callbacks:` from the config (CALLBACKS registry), then the caller's."""
        t = self.cfg["trainer"]
        found: list[Any] = [Validator(self.validate, t["val_every"])] if self.val_loader is not None else []
        checkpointer = Checkpointer(self.save_checkpoint, t["checkpoint_every"], self.emit)
        found += [checkpointer, GracefulStop(checkpointer, t["log_every"])]
        if t["early_stop_patience"]:
            found.append(EarlyStopping(t["early_stop_patience"]))
        found += [RunFiles(), ProgressBar(t["progress"])] + ([self.ema] if self.ema else [])
        found += unfreeze_callbacks(self.cfg, self.module)
        specs = self.cfg["callbacks"] or []
        found += [CALLBACKS.build(spec, key=f"callbacks[{i}]", task=self.task.scopes()) for i, spec in enumerate(specs)]
        return CallbackList([*found, *self.given_callbacks])

    def _check_monitor(self) -> None:
        """A chosen `trainer.monitor` must be a metric of this run: checked on one validation batch."""
        if not self.cfg["trainer"]["monitor"] or self.val_loader is None:
            return
        ctx = StepContext(self.module, self.module, self.device, autocast=self.autocast)
        names = list(run_validation(self.task, self.module, self.val_loader, self.evaluator, ctx, max_batches=1)[0])
        if self.monitor not in names:
            raise ConfigError(f"trainer.monitor '{self.monitor}' is not a validation metric of this run: {names}.")

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds: weights, optimizers, schedules, counters, callbacks, RNGs, config, facts."""
        s = self.state
        return {
            "model": self.module.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "horizon": self.horizon,
            "continuation": self.continuation,  # how an extended run's schedule continues (None: as built)
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "step": s.step,
            "epoch": s.epoch,
            "batch_in_epoch": s.batch_in_epoch,
            "best_value": s.best_value,
            "best_metrics": s.best_metrics,
            "callbacks": self.callbacks.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng_state(),
            "wall_time_s": self._wall_time(),
            "config": self.cfg,
            "plugins": [describe_plugin(spec) for spec in self.cfg.get("plugins") or []],  # information only
            "components": component_origins(self.cfg),  # where each was defined, for an error naming --plugin
            "facts": self.facts.to_dict(),
            "format": 2,
        }

    def save_checkpoint(self, best: bool = False) -> list[Path]:
        """Write last.pt (and best.pt) on rank 0; return the paths written."""
        if not dist.is_main():
            return []
        state = self.state_dict()
        # best.pt first: a kill between the two writes leaves last.pt older, and the resumed run redoes the step
        folder = self.run_dir / "checkpoints"
        paths = ([folder / "best.pt"] if best else []) + [folder / "last.pt"]
        for path in paths:
            save_atomic(state, path)
        return paths

    def _restore(self, ckpt: dict[str, Any]) -> None:
        check_same_facts(ckpt.get("facts"), self.facts, self.resume)
        load_model_weights(self.module, ckpt["model"], self.resume)  # a misfit names the file and the tensor
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        self.continuation, notes = restore_schedules(self.cfg["scheduler"], self.optimizers, self.schedulers, ckpt,
                                                     self.horizon)  # fmt: skip
        for note in notes:
            self.print(f"extending the run: {note}")
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.model.load_state_dict(ckpt["ema"])
        s = self.state
        s.step, s.epoch, s.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        s.best_value, s.best_metrics = ckpt["best_value"], ckpt["best_metrics"]
        legacy = {"EarlyStopping": {"rounds_without_gain": ckpt.get("rounds_without_gain", 0)}}  # format 1
        self.callbacks.load_state_dict(ckpt.get("callbacks", legacy))
        self.task.load_state_dict(ckpt.get("task") or {})
        set_rng_state(ckpt["rng"])
        self.wall_before = float(ckpt.get("wall_time_s", 0.0))
        self.print(f"resumed from {self.resume} at epoch {s.epoch}, step {s.step}")

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train until `trainer.epochs`, `trainer.max_steps` or a callback stops the run; return the result."""
        self.started = start = time.perf_counter()
        try:
            with translated_shape_errors(self):  # a mismatch before the first update names the layer and key
                self.setup()
                self.print(f"run dir: {self.run_dir}  device: {self.device}  precision: {self.precision}")
                for message in sizing_warnings(self.cfg, self.planned_updates(), self.train_set):
                    warn(message)
                self.emit("on_fit_start", self.state)
                while not self.state.finished and not self.state.stop:
                    self.emit("on_epoch_start", self.state)
                    if self._train_epoch():
                        self.state.epoch += 1
                        self.state.batch_in_epoch = 0
                    self.emit("on_epoch_end", self.state)  # validation and checkpoints are callbacks here
            if self.state.stop_reason:
                self.print(self.state.stop_reason)
            return self._finish(self._wall_time(), time.perf_counter() - start)
        except BaseException as error:
            if hasattr(self, "callbacks"):
                self.emit("on_exception", self.state, error)
            raise
        finally:
            self.close()

    def emit(self, event: str, *args: Any) -> None:
        """Call `event` on every callback (the built-in ones, the config's and the caller's)."""
        self.callbacks.emit(event, *args)

    def planned_updates(self) -> int:
        """The run's updates: the epochs' (the schedule's horizon), or trainer.max_steps when that is fewer."""
        max_steps = self.cfg["trainer"].get("max_steps")
        return min(self.horizon, int(max_steps)) if max_steps else self.horizon

    def _train_epoch(self) -> bool:
        """Run (the rest of) one epoch; False when the run stops part-way (max_steps or a callback)."""
        s, t, n_batches = self.state, self.cfg["trainer"], len(self.sampler)
        updates = 0
        self.sampler.set_epoch(s.epoch, s.batch_in_epoch)
        self.module.train()
        self.count, self.seen, self.tick = 0, 0, time.perf_counter()  # batches since the last log
        ctx = StepContext(self.model, self.module, self.device, autocast=self.autocast)
        for batch in self.train_loader:
            s.batch_in_epoch += 1
            ends_update = s.batch_in_epoch % t["accumulate"] == 0 or s.batch_in_epoch == n_batches
            ctx.step, ctx.epoch = s.step, s.epoch
            s.updated = self.updater.train_batch(self.task.move_to_device(batch, self.device), ctx, ends_update)
            self.count, self.seen, self.batches_seen = self.count + 1, self.seen + 1, self.batches_seen + 1
            if s.updated:
                s.step += 1
                updates += 1
                if (line := self.clock.tick(updates, s.step, self.planned_updates())) is not None:
                    self.print(line)
                if s.step % t["log_every"] == 0 or s.finished:
                    self._log_train(rate=True)
            self.emit("on_batch_end", s)
            if s.updated and (s.stop or s.finished):
                return s.batch_in_epoch >= n_batches
        if self.count:
            self._log_train(rate=False)
        return True

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validate (EMA weights when kept), track the best value, draw the task's pictures, emit the event."""
        t0, s = time.perf_counter(), self.state
        saved_rng = rng_state()  # validation must not change the training trajectory
        eval_model = self.ema.model.module if self.ema is not None else self.module
        if dist.is_distributed():  # every rank validates with rank 0's buffers (BatchNorm statistics)
            for module in {id(m): m for m in (self.module, eval_model)}.values():
                for buffer in module.buffers():
                    torch.distributed.broadcast(buffer, 0)
        ctx = StepContext(eval_model, eval_model, self.device, step=s.step, epoch=s.epoch, autocast=self.autocast)
        metrics, self.last_extras = run_validation(self.task, eval_model, self.val_loader, self.evaluator, ctx)
        if self.monitor not in metrics:
            self.save_checkpoint()  # keep the epoch's training
            raise VisionkitError(
                f"The monitored metric '{self.monitor}' is not among this run's validation metrics "
                f"({', '.join(metrics) or 'none'}). Set trainer.monitor to one of them, or add the metric to 'metrics'."
            )
        s.improved = improves(metrics[self.monitor], s.best_value, self.monitor_mode)
        if s.improved:
            s.best_value, s.best_metrics = metrics[self.monitor], dict(metrics)
        s.metrics = metrics
        if dist.is_main():
            self.task.on_validation_end(ctx, self.val_set, self.run_dir, s.epoch, {**metrics, **self.last_extras})
        set_rng_state(saved_rng)
        s.validation_seconds = time.perf_counter() - t0
        self.emit("on_validation_end", s, {"step": s.step, "epoch": s.epoch, **metrics})
        return metrics

    # -- output ---------------------------------------------------------------------------------
    def _log_train(self, rate: bool) -> None:
        """Average the summed losses since the last log into a record for the `on_log` callbacks."""
        self.updater.check(self.state.step)  # non-finite updates since the last log ("log" finite check)
        self.state.nonfinite_updates = self.updater.nonfinite
        values = {f"train/{k}": float(v) / max(self.count, 1) for k, v in self.updater.take_losses().items()}
        lr = next(iter(self.optimizers.values())).param_groups[0]["lr"]
        self.state.last_loss = {k: v for k, v in values.items() if k.endswith("loss")}
        record = {"step": self.state.step, "epoch": self.state.epoch, **values, "lr": lr}
        if rate:
            now = time.perf_counter()
            images = self.seen * self.cfg["data"]["batch_size"] * dist.world_size()
            record["images_per_s"] = round(images / max(now - self.tick, 1e-9), 1)
            self.tick = now
        self.count, self.seen = 0, 0
        self.emit("on_log", self.state, record)

    def print(self, message: str) -> None:
        """Print a line on rank 0."""
        if dist.is_main():
            print(message, flush=True)

    def _wall_time(self) -> float:
        """Seconds of training so far over the whole run: earlier processes (to their checkpoint) and this one."""
        return self.wall_before + time.perf_counter() - self.started

    def _finish(self, seconds: float, this_process: float) -> RunResult:
        self.updater.check(self.state.step)
        self.state.nonfinite_updates = self.updater.nonfinite
        ranks = dist.all_gather_objects({"rank": dist.rank(), "batches": self.batches_seen})
        s, best_ckpt = self.state, self.run_dir / "checkpoints" / "best.pt"
        if dist.is_main() and not best_ckpt.exists() and best_ckpt.with_name("last.pt").exists():
            shutil.copyfile(best_ckpt.with_name("last.pt"), best_ckpt)  # no validation ran: last is the best we have
        run = {"device": str(self.device), "precision": self.precision, "world_size": dist.world_size(), "ranks": ranks}
        summary = run_summary(self.cfg["task"], s, self.run_dir, (seconds, this_process), run, self.facts)
        summary.update({k: v for k, v in self.last_extras.items() if not k.startswith("_")})  # '_': in memory only
        self.emit("on_fit_end", s, summary)
        dist.barrier()  # every rank returns once rank 0 has written the run's files, and leaves the group together
        self.print(f"done in {seconds:.1f}s; results in {self.run_dir}")
        return RunResult(self.run_dir, s.metrics, s.best_metrics, best_ckpt, summary)
