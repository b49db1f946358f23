"""Distributed helpers (torchrun, env:// rendezvous): ranks, reductions and gathers for metrics."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that writes files and prints progress."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another env:// launcher) set WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: torch.device, timeout_s: float | None = None) -> bool:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); True when this call opened it.

    `timeout_s` bounds how long a collective waits for a rank that died: the survivors fail instead of
    hanging, so torchrun can restart the group.
    """
    if is_distributed() or not launched_by_torchrun():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
    store = attempt_store(timeout)
    if store is None:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    else:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return True


def attempt_store(timeout: datetime.timedelta | None) -> dist.Store | None:
    """The torchrun agent's store under a prefix of this restart attempt (single node); None for plain env://.

    The agent serves one store for its whole life, so after a restart the keys of the killed attempt are still
    there: a new rank could read a dead peer's address from them and fail with "connection refused" (or leave the
    other rank waiting). Keys under `attempt_<restart count>` are this attempt's only. Only one agent counts the
    restarts on a single node; across nodes the counts can differ, so there torch's own rendezvous is kept.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    client = dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        int(env["WORLD_SIZE"]),
        is_master=False,
        timeout=timeout or datetime.timedelta(minutes=30),
    )
    return dist.PrefixStore(f"visionkit/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)


def destroy_process_group() -> None:
    """Leave the process group if one is open."""
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place; returns it); a no-op when not distributed."""
    if is_distributed():
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            moved = tensor.cuda()
            dist.all_reduce(moved)
            tensor.copy_(moved.cpu())
        else:
            dist.all_reduce(tensor)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from each rank into a list (rank order)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        dist.barrier()
