"""The task-agnostic trainer: one loop for every registered task."""

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
from visionkit.engine import distributed as dist
from visionkit.engine.batching import build_loaders
from visionkit.engine.callbacks import (
    EMA,
    CallbackList,
    Checkpointer,
    EarlyStopping,
    LoopState,
    ProgressBar,
    RunFiles,
    Validator,
)
from visionkit.engine.checkpoint import check_same_facts, load_checkpoint, rng_state, save_atomic, set_rng_state
from visionkit.engine.evaluation import metric_names, run_validation
from visionkit.engine.finetune import apply_freeze, finetune_callbacks
from visionkit.engine.interrupts import GracefulStop
from visionkit.engine.loader import close_workers
from visionkit.engine.metrics import Evaluator, improves, monitor_mode
from visionkit.engine.optim import build_optimizer, build_scheduler, fast_forward_scheduler
from visionkit.engine.precision import autocast_factory, make_scaler, resolve_precision, select_device
from visionkit.engine.report import RunResult, check_run_dir, default_run_dir, prepare_run_dir
from visionkit.engine.weights import load_model_weights, skip_pretrained
from visionkit.errors import ConfigError, VisionkitError
from visionkit.registry import TASKS
from visionkit.tasks.base import StepContext, Task


class TrainingError(VisionkitError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says what to try."""


class Trainer:
    """Trains `cfg["task"]`: builds it from the registries, runs the loop, validates, checkpoints."""

    def __init__(
        self, cfg: dict[str, Any], resume: str | Path | None = None, callbacks: Sequence[Any] = (), write: bool = True
    ) -> None:
        self.cfg, self.resume, self.callbacks = cfg, resume, list(callbacks)
        self.write = write  # False: build everything but create no run folder (dry run, LR finder)
        t = cfg["trainer"]
        self.device = select_device(t["device"])
        if t["num_threads"] and self.device.type == "cpu":
            torch.set_num_threads(t["num_threads"])
        self.owns_process_group = dist.init_process_group(self.device, t["dist_timeout"])
        self.precision = resolve_precision(t["precision"], self.device)
        self.autocast = autocast_factory(self.precision, self.device)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_value: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.bad_steps = 0
        self.started = time.perf_counter()
        self.wall_before = 0.0  # training seconds of the earlier processes of a resumed run (up to its checkpoint)
        self.batches_seen = 0  # this rank's training batches in this process (reported per rank)

    # -- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg["trainer"]
        torch.manual_seed(t["seed"])
        random.seed(t["seed"])
        np.random.seed(t["seed"])
        run_dir = default_run_dir(cfg) if dist.is_main() else None
        self.run_dir = Path(dist.all_gather_objects(str(run_dir))[0])
        if dist.is_main() and self.write:
            check_run_dir(self.run_dir)  # a folder that cannot be written fails here, before any work
        self.task: Task = TASKS.get(cfg["task"])(cfg)
        self.train_set = self.task.build_dataset("train")
        self.val_set = self.task.build_dataset("val") if cfg["data"].get("val") is not None else None
        # What the data tells (classes, channels, ...) is a value handed to the builders and saved with checkpoints.
        self.facts = self.task.facts = self.task.data_facts(self.train_set, self.val_set)
        with skip_pretrained() if self.resume else contextlib.nullcontext():  # a resume loads its own weights
            self.module = self.task.build_model(self.facts).to(self.device)
        apply_freeze(self.module, cfg)  # model.freeze patterns (trainer.unfreeze_at lifts them)
        if t["channels_last"]:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.task.setup(self.module, self.device)
        with torch.random.fork_rng(devices=[]):  # metric networks must not change the training run's RNG
            self.evaluator = Evaluator(self.task.build_metrics(self.facts), self.device)
        self.monitor = t["monitor"] or self.task.monitor
        self.monitor_mode = t["monitor_mode"] or monitor_mode(self.monitor, self.task)
        self.last_extras: dict[str, Any] = {}
        build_loaders(self)  # train/val loaders, sampler, updates_per_epoch (data.batch_size may be 'auto')
        if dist.is_main() and self.write:
            prepare_run_dir(self.run_dir)
            dump_config(cfg, self.run_dir / "config.yaml")
            dist.mark_run_dir(self.run_dir)  # a torchrun restart finds its run dir by this marker
        self.groups = self.task.optimizer_groups(self.module)
        self.optimizers = {}
        names = {p: n for n, p in self.module.named_parameters()}
        for name, group in self.groups.items():
            group.params = list(group.params)
            spec = {**cfg["optimizer"], **group.overrides}
            self.optimizers[name] = build_optimizer(spec, group.params, names)
        self.horizon = t["epochs"] * self.updates_per_epoch
        self.schedulers = {n: build_scheduler(cfg["scheduler"], o, self.horizon) for n, o in self.optimizers.items()}
        self.scaler = make_scaler(self.precision, self.device)
        self.ema = EMA(self.module, t["ema"]) if t["ema"] else None
        self.state = LoopState(cfg, self.run_dir, dist.is_main(), t["epochs"], self.monitor, self.monitor_mode)
        self.state.batches_per_epoch = len(self.sampler)
        self.hooks = self._build_callbacks()
        if t["monitor"] and self.val_loader is not None:  # a chosen monitor is checked before training
            names = metric_names(self.task, self.module, self.val_loader, self.device, self.autocast, self.evaluator)
            if self.monitor not in names:
                raise ConfigError(f"trainer.monitor '{self.monitor}' is not a validation metric of this run: {names}.")
        if self.resume:
            self._restore(load_checkpoint(self.resume))
        self._sync_state()
        self.model: nn.Module = self.module
        self.ddp: DistributedDataParallel | None = None
        if dist.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = self.model = DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=self.task.find_unused_parameters
            )
        if t["compile"]:
            self.model = torch.compile(self.model)

    def _build_callbacks(self) -> CallbackList:
        """The built-in hooks, then `callbacks:` from the config (CALLBACKS registry), then the API's."""
        from visionkit.registry import CALLBACKS

        t = self.cfg["trainer"]
        hooks: list[Any] = []
        if self.val_loader is not None:
            hooks.append(Validator(self._validate, t["val_every"], self._done))
        checkpointer = Checkpointer(self._save, t["checkpoint_every"], self._emit)
        hooks += [checkpointer, GracefulStop(checkpointer, t["log_every"])]
        if t["early_stop_patience"]:
            hooks.append(EarlyStopping(t["early_stop_patience"]))
        hooks += [RunFiles(), ProgressBar(t["progress"])] + ([self.ema] if self.ema else [])
        hooks += finetune_callbacks(self.cfg, self.module)
        specs = self.cfg["callbacks"] or []
        hooks += [CALLBACKS.build(spec, key=f"callbacks[{i}]", task=self.task.scopes()) for i, spec in enumerate(specs)]
        return CallbackList([*hooks, *self.callbacks])

    # -- checkpoints ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "horizon": self.horizon,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_value": self.best_value,
            "best_metrics": self.best_metrics,
            "callbacks": self.hooks.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng_state(),
            "wall_time_s": self._wall_time(),
            "config": self.cfg,
            "facts": self.facts.to_dict(),
            "format": 2,
        }

    def _save(self, best: bool = False) -> list[Path]:
        """Write last.pt (and best.pt) on rank 0; return the paths written."""
        if not dist.is_main():
            return []
        state = self._state()
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
        if ckpt["horizon"] == self.horizon:
            for name, sched in self.schedulers.items():
                sched.load_state_dict(ckpt["schedulers"][name])
        else:  # trainer.epochs changed: the same schedule over the new horizon, fast-forwarded
            for name, opt in self.optimizers.items():
                self.schedulers[name] = fast_forward_scheduler(self.cfg["scheduler"], opt, self.horizon, ckpt["step"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.model.load_state_dict(ckpt["ema"])
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        self.best_value, self.best_metrics = ckpt["best_value"], ckpt["best_metrics"]
        legacy = {"EarlyStopping": {"rounds_without_gain": ckpt.get("rounds_without_gain", 0)}}  # format 1
        self.hooks.load_state_dict(ckpt.get("callbacks", legacy))
        self.task.load_state_dict(ckpt.get("task") or {})
        set_rng_state(ckpt["rng"])
        self.wall_before = float(ckpt.get("wall_time_s", 0.0))
        self._print(f"resumed from {self.resume} at epoch {self.epoch}, step {self.step}")

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train until `trainer.epochs`, `trainer.max_steps` or a callback stops the run; return the result."""
        self.started = start = time.perf_counter()
        try:
            self._setup()
            self._print(f"run dir: {self.run_dir}  device: {self.device}  precision: {self.precision}")
            self._emit("on_fit_start", self.state)
            while not self._done() and not self.state.stop:
                self._emit("on_epoch_start", self.state)
                if self._train_epoch():
                    self.epoch += 1
                    self.batch_in_epoch = 0
                self._sync_state()
                self._emit("on_epoch_end", self.state)  # validation and checkpoints are callbacks here
            if self.state.stop_reason:
                self._print(self.state.stop_reason)
            return self._finish(self._wall_time(), time.perf_counter() - start)
        except BaseException as error:
            if hasattr(self, "hooks"):
                self._emit("on_exception", self.state, error)
            raise
        finally:
            close_workers(getattr(self, "train_loader", None), getattr(self, "val_loader", None))
            if self.owns_process_group:  # leave a process group the caller opened alone
                dist.destroy_process_group()

    def _emit(self, event: str, *args: Any) -> None:
        self.hooks.emit(event, *args)

    def _sync_state(self) -> None:
        """Copy the loop counters into the state callbacks see."""
        s = self.state
        s.step, s.epoch, s.batch_in_epoch = self.step, self.epoch, self.batch_in_epoch
        s.best_value, s.best_metrics = self.best_value, self.best_metrics

    def _done(self) -> bool:
        t = self.cfg["trainer"]
        return self.epoch >= t["epochs"] or (t["max_steps"] is not None and self.step >= t["max_steps"])

    def _train_epoch(self) -> bool:
        """Run (the rest of) one epoch; False when the run must stop part-way (max_steps)."""
        t = self.cfg["trainer"]
        accumulate, max_steps = t["accumulate"], t["max_steps"]
        n_batches = len(self.sampler)
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.module.train()
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.tick, self.seen = 0, time.perf_counter(), 0
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        skipped: set[str] = set()  # optimizers whose training_step returned None in this update
        ctx = StepContext(self.model, self.module, self.device, autocast=self.autocast)
        multi, state = len(self.groups) > 1, self.state
        for batch in self.train_loader:
            self.batch_in_epoch += 1
            is_update = self.batch_in_epoch % accumulate == 0 or self.batch_in_epoch == n_batches
            batch = self.task.move_to_device(batch, self.device)
            ctx.step, ctx.epoch = self.step, self.epoch
            for name, group in self.groups.items():
                if self.step % group.every:
                    continue
                ctx.optimizer = name
                if multi:
                    self._toggle(name)
                sync = self.ddp.no_sync() if self.ddp is not None and not is_update else contextlib.nullcontext()
                with sync:
                    with self.autocast():
                        out = self.task.training_step(batch, ctx)
                    if out is None:
                        skipped.add(name)
                        continue
                    loss = out["loss"]
                    self.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
                finite &= torch.isfinite(loss.detach())
                self._accumulate_logs(out, name if multi else None)
                if multi and is_update and name not in skipped:
                    if not bool(finite):
                        break
                    self._step_optimizer(name)  # alternate: the next group trains against these new weights
            self.count += 1
            self.seen += 1
            self.batches_seen += 1
            updated = False
            if is_update:
                if multi:
                    self._toggle(None)
                updated = self._update(skipped, finite, multi)
                if skipped:
                    skipped = set()
                if not updated:  # the flag may have gone false: start the next update afresh
                    finite = torch.ones((), dtype=torch.bool, device=self.device)
            state.step, state.batch_in_epoch, state.updated = self.step, self.batch_in_epoch, updated
            if updated and (self.step % t["log_every"] == 0 or (max_steps is not None and self.step >= max_steps)):
                self._log_train(rate=True)
            self._emit("on_batch_end", state)
            if updated and (state.stop or (max_steps is not None and self.step >= max_steps)):
                return self.batch_in_epoch >= n_batches
        if self.count:
            self._log_train(rate=False)
        return True

    def _update(self, skipped: set[str], finite: torch.Tensor, multi: bool) -> bool:
        """End an update: step the optimizer(s) unless every step was skipped or the loss was not finite."""
        if skipped and (not multi or skipped >= set(self.groups)):
            for opt in self.optimizers.values():  # a skipped step leaves weights, state, schedule and step alone
                opt.zero_grad(set_to_none=True)
            return False
        for name in skipped:  # several optimizers: drop what a skipped one accumulated in this update
            self.optimizers[name].zero_grad(set_to_none=True)
        if not bool(finite):
            self._skip_update()
            return False
        self.bad_steps = 0
        if not multi:
            self._step_optimizer("main" if "main" in self.optimizers else next(iter(self.optimizers)))
        self.scaler.update()
        self.step += 1
        return True

    def _accumulate_logs(self, out: dict[str, torch.Tensor], optimizer: str | None) -> None:
        """Add a step's named losses to the sums averaged at the next log (no host sync)."""
        for key, value in out.items():
            key = f"{optimizer}/{key}" if optimizer and key == "loss" else key
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def _step_optimizer(self, name: str) -> None:
        """Unscale, clip and step one optimizer and its schedule, then clear its gradients."""
        opt, clip = self.optimizers[name], self.cfg["trainer"]["clip_grad"]
        if clip:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.groups[name].params, clip)
        self.scaler.step(opt)
        self.schedulers[name].step()
        opt.zero_grad(set_to_none=True)

    def _skip_update(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.bad_steps += 1
        self._print(f"warning: non-finite loss at step {self.step}; update skipped ({self.bad_steps} in a row)")
        if self.bad_steps >= self.cfg["trainer"]["max_bad_steps"]:
            raise TrainingError(
                f"The loss was NaN/inf for {self.bad_steps} updates in a row (step {self.step}). Try a lower "
                "optimizer.lr, trainer.clip_grad=1.0, trainer.precision=fp32, or check the data for bad values."
            )

    def _toggle(self, name: str | None) -> None:
        """Let only the parameters of optimizer `name` require gradients (all of them for None)."""
        for other, group in self.groups.items():
            flag = name is None or other == name
            for p in group.params:
                p.requires_grad_(flag)

    # -- validation -----------------------------------------------------------------------------
    def _validate(self) -> None:
        """Validate (EMA weights when kept), track the best value, draw the task's pictures, emit the event."""
        t0 = time.perf_counter()
        saved_rng = rng_state()  # validation must not change the training trajectory
        eval_model = self.ema.model.module if self.ema is not None else self.module
        if dist.is_distributed():  # every rank validates with rank 0's buffers (BatchNorm statistics)
            for module in {id(m): m for m in (self.module, eval_model)}.values():
                for buffer in module.buffers():
                    torch.distributed.broadcast(buffer, 0)
        ctx = StepContext(eval_model, eval_model, self.device, step=self.step, epoch=self.epoch, autocast=self.autocast)
        metrics, self.last_extras = run_validation(
            self.task, eval_model, self.val_loader, self.device, self.autocast, ctx, self.evaluator
        )
        if self.monitor not in metrics:
            self._save()  # keep the epoch's training
            raise VisionkitError(
                f"The monitored metric '{self.monitor}' is not among this run's validation metrics "
                f"({', '.join(metrics) or 'none'}). Set trainer.monitor to one of them, or add the metric to 'metrics'."
            )
        value = metrics[self.monitor]
        improved = improves(value, self.best_value, self.monitor_mode)
        if improved:
            self.best_value, self.best_metrics = value, dict(metrics)
        self.last_metrics = metrics
        if dist.is_main():
            self.task.on_validation_end(ctx, self.val_set, self.run_dir, self.epoch, {**metrics, **self.last_extras})
        set_rng_state(saved_rng)
        self._sync_state()
        self.state.metrics, self.state.improved = metrics, improved
        self.state.validation_seconds = time.perf_counter() - t0
        self._emit("on_validation_end", self.state, {"step": self.step, "epoch": self.epoch, **metrics})

    # -- output ---------------------------------------------------------------------------------
    def _log_train(self, rate: bool) -> None:
        """Average the summed losses since the last log into a record for the `on_log` callbacks."""
        values = {f"train/{k}": float(v) / max(self.count, 1) for k, v in self.sums.items()}
        lr = next(iter(self.optimizers.values())).param_groups[0]["lr"]
        self.state.last_loss = {k: v for k, v in values.items() if k.endswith("loss")}
        record = {"step": self.step, "epoch": self.epoch, **values, "lr": lr}
        if rate:
            now = time.perf_counter()
            images = self.seen * self.cfg["data"]["batch_size"] * dist.world_size()
            record["images_per_s"] = round(images / max(now - self.tick, 1e-9), 1)
            self.tick = now
        self.sums, self.count, self.seen = {}, 0, 0
        self._emit("on_log", self.state, record)

    def _print(self, message: str) -> None:
        if dist.is_main():
            print(message, flush=True)

    def _wall_time(self) -> float:
        """Seconds of training so far over the whole run: earlier processes (to their checkpoint) and this one."""
        return self.wall_before + time.perf_counter() - self.started

    def _finish(self, seconds: float, this_process: float) -> RunResult:
        ranks = dist.all_gather_objects({"rank": dist.rank(), "batches": self.batches_seen})
        ckpt_dir = self.run_dir / "checkpoints"
        best_ckpt = ckpt_dir / "best.pt"
        self._sync_state()
        if dist.is_main() and not best_ckpt.exists() and (ckpt_dir / "last.pt").exists():
            shutil.copyfile(ckpt_dir / "last.pt", best_ckpt)  # no validation ran: last is the best we have
        summary = {
            "task": self.cfg["task"],
            "monitor": self.monitor,
            "monitor_mode": self.monitor_mode,
            "final": self.last_metrics,
            "best": self.best_metrics,
            "best_value": self.best_value,
            "best_checkpoint": str(best_ckpt),
            "last_checkpoint": str(ckpt_dir / "last.pt"),
            "steps": self.step,
            "epochs": self.epoch,
            "wall_time_s": round(seconds, 2),
            "wall_time_this_process_s": round(this_process, 2),
            "device": str(self.device),
            "precision": self.precision,
            "world_size": dist.world_size(),
            "ranks": ranks,
            "data": self.facts.to_dict(),
            **self.last_extras,
        }
        self._emit("on_fit_end", self.state, summary)
        self._print(f"done in {seconds:.1f}s; results in {self.run_dir}")
        return RunResult(self.run_dir, self.last_metrics, self.best_metrics, best_ckpt, summary)
