"""A light module for spawned processes (imports nothing heavy, so start-up stays quick)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from visionkit.tasks.segmentation.metrics import SegmentationMetrics


def reduce_worker(rank: int, world: int, init_file: str, preds: list, targets: list, out_file: str) -> None:
    """Join a gloo group, score this rank's share and let rank 0 save the reduced scores."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = SegmentationMetrics(3, ignore_index=255)
        metric.update(preds[rank], targets[rank])
        scores = metric.compute()
        if rank == 0:
            torch.save({"mIoU": scores["mIoU"], "pixel_acc": scores["pixel_acc"]}, out_file)
    finally:
        dist.destroy_process_group()
