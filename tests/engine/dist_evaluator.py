"""Run under `torchrun --nproc_per_node=2`: each rank scores its half; compute() twice must agree."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from tests.engine.toy_task import ToyAccuracy
from visionkit.engine.metrics import Evaluator


def main(out_file: str) -> None:
    """Score rank-specific batches, compute twice, let rank 0 write both results."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    logits, target = torch.randn(10, 3), torch.randint(0, 3, (10,))
    losses = torch.rand(10)
    evaluator = Evaluator([ToyAccuracy(3)])
    evaluator.reset()
    half = slice(0, 4) if rank == 0 else slice(4, 10)  # unequal shares: 4 and 6 samples
    evaluator.update({"loss": losses[half].mean(), "logits": logits[half], "target": target[half]}, 6 if rank else 4)
    first = evaluator.compute()
    again = evaluator.compute()
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump({"first": first, "again": again}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
