"""Batches for training: the train/val loaders, `data.batch_size: auto` and class-balanced sampling."""

from __future__ import annotations

import math
from typing import Any

from visionkit.engine import distributed as dist
from visionkit.engine.loader import build_loader
from visionkit.errors import VisionkitError


def build_loaders(trainer: Any) -> None:
    """Set the trainer's train_loader, sampler, val_loader and updates_per_epoch from `data:`."""
    d, t = trainer.cfg["data"], trainer.cfg["trainer"]
    common = dict(
        batch_size=d["batch_size"],
        seed=t["seed"],
        collate=trainer.task.collate,
        num_workers=d["num_workers"],
        rank=dist.rank(),
        world=dist.world_size(),
        pin_memory=trainer.device.type == "cuda",
    )
    trainer.train_loader, trainer.sampler = build_loader(trainer.train_set, shuffle=True, train=True, **common)
    trainer.val_loader = None
    if trainer.val_set is not None:
        trainer.val_loader, _ = build_loader(trainer.val_set, shuffle=False, train=False, **common)
    if len(trainer.sampler) == 0:
        raise VisionkitError("The training set is empty; check data.train.")
    trainer.updates_per_epoch = math.ceil(len(trainer.sampler) / t["accumulate"])
