"""Parts of benchmarks/gpu_check.py: a synthetic classification dataset and a torchvision ResNet builder
(registered through the public registries, as a plugin would), the hand-written AMP loop, a visionkit run
with a probe callback, and the steady-state throughput of a run's log records."""

from __future__ import annotations

import contextlib
import io
import math
import time
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

import visionkit
from visionkit import Callback
from visionkit.data.facts import DataFacts
from visionkit.errors import ConfigError
from visionkit.registry import DATASETS, MODELS

TASK = "classification"
LR = 0.01  # SGD with momentum 0.9 on both sides; random labels, so only the speed and finiteness matter


class SyntheticImages(Dataset):
    """Random normalised images and random labels: a pool of `pool` images reused, so loading costs a copy."""

    def __init__(
        self,
        num_samples: int = 1024,
        num_classes: int = 1000,
        image_size: int = 224,
        channels: int = 3,
        pool: int = 16,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        generator = torch.Generator().manual_seed(seed + (split == "val"))
        self.images = torch.randn(pool, channels, image_size, image_size, generator=generator)
        self.labels = torch.randint(num_classes, (num_samples,), generator=generator).tolist()
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index % len(self.images)], self.labels[index]

    def facts(self) -> DataFacts:
        """Class count, channels and image side."""
        return DataFacts(num_classes=self.num_classes, channels=self.channels, image_size=self.image_size)


def torchvision_resnet(num_classes: int, in_chans: int = 3, arch: str = "resnet50") -> nn.Module:
    """A torchvision ResNet (random weights): `model: {name: torchvision_resnet, arch: resnet50}`."""
    if not arch.startswith(("resnet", "wide_resnet", "resnext")) or not hasattr(torchvision.models, arch):
        raise ConfigError(f"model.arch={arch!r} is not a torchvision ResNet; use e.g. resnet18 or resnet50.")
    if in_chans != 3:
        raise ConfigError(f"torchvision_resnet takes RGB images; the data has {in_chans} channel(s).")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def register_components() -> None:
    """Register the dataset `synthetic` and the model `torchvision_resnet` for classification (once)."""
    if "synthetic" not in DATASETS.names(TASK):
        DATASETS.register("synthetic", SyntheticImages, task=TASK)
    if "torchvision_resnet" not in MODELS.names(TASK):
        MODELS.register("torchvision_resnet", torchvision_resnet, task=TASK)


class Probe(Callback):
    """Keeps a run's log records, counts batches without an update and notes the process group at start."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.skipped = 0
        self.group: dict[str, Any] = {}

    def on_fit_start(self, state: Any) -> None:
        """Note whether a process group is open, its backend and size."""
        on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.group = {
            "initialized": on,
            "backend": torch.distributed.get_backend() if on else None,
            "world_size": torch.distributed.get_world_size() if on else 1,
        }

    def on_batch_end(self, state: Any) -> None:
        """Count a batch whose update was skipped (non-finite loss, checked on the host each update)."""
        self.skipped += not state.updated

    def on_fit_end(self, state: Any, summary: dict[str, Any]) -> None:
        """Non-finite updates the loop counted without a host read each update (`trainer.finite_check: log`)."""
        self.skipped = max(self.skipped, state.nonfinite_updates)

    def on_log(self, state: Any, record: dict[str, Any]) -> None:
        """Keep the record."""
        self.records.append(dict(record))


def steady_rate(records: list[dict[str, Any]], after: int) -> float | None:
    """Images/s over the log intervals that start at or after step `after` (the batch size is constant, so
    this is total steps over the total of steps / rate)."""
    counted = seconds = 0.0
    previous = 0
    for record in records:
        steps, start = record["step"] - previous, previous
        previous = record["step"]
        if "images_per_s" in record and start >= after and steps > 0 and record["images_per_s"] > 0:
            counted += steps
            seconds += steps / record["images_per_s"]
    return counted / seconds if seconds else None


def losses_finite(records: list[dict[str, Any]]) -> bool:
    """True when every logged training loss is a finite number (and there is at least one)."""
    values = [v for r in records for k, v in r.items() if k.startswith("train/") and k.endswith("loss")]
    return bool(values) and all(math.isfinite(v) for v in values)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_counters() -> dict[str, int]:
    """torch._dynamo's graph and graph-break counts since the last reset."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "graph_breaks": sum(counters["graph_break"].values())}


def hand_loop(
    model_spec: dict[str, Any],
    *,
    device: torch.device,
    batch: int,
    size: int,
    warmup: int,
    steps: int,
    precision: str,
    compile: bool,
    backend: str,
    workers: int,
    num_classes: int,
) -> dict[str, Any]:
    """A plain AMP loop (autocast, channels_last, SGD) over the same dataset class and model builder.

    Times `steps` updates after `warmup` fed by a DataLoader, then `steps` more on one batch kept on the device.
    """
    torch.manual_seed(0)
    model = MODELS.build(model_spec, task=TASK, num_classes=num_classes, in_chans=3).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    net = torch.compile(model, backend=backend) if compile else model
    dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(precision)
    if precision == "fp16-mixed":
        raise ValueError("the hand loop runs fp32 or bf16-mixed (no GradScaler)")
    dataset = SyntheticImages(num_samples=(warmup + steps) * batch, num_classes=num_classes, image_size=size)
    loader = DataLoader(
        dataset, batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda", drop_last=True
    )

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    losses, start = [], time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        losses.append(step(images, labels.to(device, non_blocking=True)))
    sync(device)
    fed = steps * batch / (time.perf_counter() - start)
    labels = labels.to(device)
    for _ in range(2):  # the last batch stays on the device: same shapes, so no recompilation
        step(images, labels)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(step(images, labels))
    sync(device)
    resident = steps * batch / (time.perf_counter() - start)
    return {
        "images_per_s": fed,
        "resident_images_per_s": resident,
        "losses_finite": bool(torch.isfinite(torch.stack(losses).float()).all()),
        "final_loss": float(losses[-1]),
    }


def trainer_config(
    model_spec: dict[str, Any],
    *,
    device: str,
    batch: int,
    size: int,
    steps: int,
    log_every: int,
    precision: str,
    compile: bool,
    workers: int,
    num_classes: int,
    work_dir: str,
) -> dict[str, Any]:
    """A visionkit config for the same model, data, optimizer and loss: one epoch of `steps` updates, no validation."""
    return {
        "task": TASK,
        "model": dict(model_spec),
        "work_dir": work_dir,
        "data": {
            "train": {
                "name": "synthetic",
                "num_samples": steps * batch,
                "num_classes": num_classes,
                "image_size": size,
            },
            "val": None,
            "image_size": size,
            "batch_size": batch,
            "num_workers": workers,
            "train_transforms": [],
        },
        "loss": {"name": "cross_entropy"},
        "metrics": [],
        "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9},
        "scheduler": {"name": "constant"},
        "trainer": {
            "epochs": 1,
            "max_steps": steps,
            "log_every": log_every,
            "progress": False,
            "device": device,
            "precision": precision,
            "channels_last": True,
            "compile": compile,
        },
    }


def run_visionkit(config: Any, overrides: list[str], *, task: str | None, work_dir: str, after: int) -> dict[str, Any]:
    """visionkit.train with a probe; its output is kept quiet (its last lines come back on an error)."""
    probe, out = Probe(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):
            result = visionkit.train(config, overrides, task=task, work_dir=work_dir, callbacks=[probe])
    except BaseException:
        print(out.getvalue()[-2000:], flush=True)
        raise
    scaler = None
    if result.summary["precision"] == "fp16-mixed":
        from visionkit.engine.checkpoint import load_checkpoint

        scaler = float(load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["scaler"]["scale"])
    return {
        "images_per_s": steady_rate(probe.records, after),
        "losses_finite": losses_finite(probe.records),
        "steps": result.summary["steps"],
        "skipped_updates": probe.skipped,
        "precision": result.summary["precision"],
        "device": result.summary["device"],
        "process_group": probe.group,
        "seconds": round(time.perf_counter() - start, 2),
        "last_losses": {k: v for k, v in probe.records[-1].items() if k.endswith("loss")} if probe.records else {},
        "val": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        **({"grad_scale": scaler} if scaler is not None else {}),
    }
