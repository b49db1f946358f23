"""A light module for spawned processes (imports nothing heavy, so start-up stays quick)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from visionkit.tasks.segmentation.metrics import SegmentationMetrics


def reduce_worker(rank: int, world: int, init_file: str, preds: list, targets: list, out_file: str) -> None:
    """Join a gloo group, score this rank's share twice and let rank 0 save the reduced scores."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = SegmentationMetrics(3, ignore_index=255)
        metric.update({"pred": preds[rank], "target": targets[rank]})
        local = metric.matrix.clone()
        first = metric.compute()
        again = metric.compute()  # cached by torchmetrics: no second reduction, same numbers
        if rank == 0:
            torch.save(
                {
                    "mIoU": first["mIoU"],
                    "pixel_acc": first["pixel_acc"],
                    "first": first,
                    "again": again,
                    "matrix": local,
                    "matrix_again": metric.matrix.clone(),
                },
                out_file,
            )
    finally:
        dist.destroy_process_group()
