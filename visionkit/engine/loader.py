"""Data loaders whose randomness depends only on (seed, epoch, batch), so resumed runs are exact."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler, Subset, get_worker_info

from visionkit.errors import ConfigError


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """A seed for one batch, independent of which worker loads it."""
    return ((((seed * 1_000_003) + epoch) * 1_000_033 + batch) * 1009 + rank) % (2**31 - 1)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of `(index, seed, epoch)` for this rank: a DistributedSampler permutation per epoch, batched,
    each batch tagged with its seed and epoch, optionally starting part-way into the epoch (for resume)."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        pad: bool = True,
    ) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world, self.drop_last, self.pad = rank, world, drop_last, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and the first batch to yield."""
        self.epoch, self.start = epoch, start_batch

    def _indices(self) -> list[int]:
        if self.pad or self.world == 1:
            sampler = DistributedSampler(
                range(self.size), num_replicas=self.world, rank=self.rank, shuffle=self.shuffle, seed=self.seed
            )
            sampler.set_epoch(self.epoch)
            return list(sampler)
        return list(range(self.size))[self.rank :: self.world]  # validation: every sample exactly once

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self._indices()
        n_batches = len(self)
        for b in range(self.start, n_batches):
            chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
            s = batch_seed(self.seed, self.epoch, b, self.rank)
            yield [(i, s, self.epoch) for i in chunk]

    def __len__(self) -> int:
        per_rank = (
            -(-self.size // self.world)
            if (self.pad or self.world == 1)
            else len(range(self.rank, self.size, self.world))
        )
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)


class BalancedBatchSampler(EpochBatchSampler):
    """Class-balanced training batches: each epoch draws `size` indices with replacement, a sample's chance
    proportional to 1/(its class's count), from a generator seeded by (seed, epoch). Every rank makes the same
    global draw and takes its own interleaved slice, so ranks are disjoint and a resume restarts mid-epoch
    exactly (`set_epoch(epoch, start_batch)` as for EpochBatchSampler)."""

    def __init__(self, labels: Sequence[int], batch_size: int, *, seed: int, rank: int = 0, world: int = 1) -> None:
        super().__init__(len(labels), batch_size, shuffle=True, seed=seed, rank=rank, world=world, pad=True)
        targets = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(targets) if len(targets) else np.zeros(0, np.int64)
        self.class_counts = counts
        self.weights = torch.from_numpy(1.0 / counts[targets]) if len(targets) else torch.zeros(0, dtype=torch.float64)

    def global_draw(self, epoch: int) -> list[int]:
        """The epoch's draw over all ranks (padded to a multiple of the world size), before sharding."""
        per_rank = -(-self.size // self.world)
        if per_rank == 0:
            return []
        generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, 0, 0) + 1)
        return torch.multinomial(self.weights, per_rank * self.world, replacement=True, generator=generator).tolist()

    def _indices(self) -> list[int]:
        return self.global_draw(self.epoch)[self.rank :: self.world]


def class_labels(dataset: Dataset, key: str = "data.sampler") -> list[int]:
    """One integer class per sample, from `class_of(i)`, a `targets`/`labels` attribute, or through a
    Subset/ConcatDataset; a ConfigError naming `key` when the dataset cannot tell."""
    if isinstance(dataset, Subset):
        inner = class_labels(dataset.dataset, key)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [label for part in dataset.datasets for label in class_labels(part, key)]
    name = type(dataset).__name__
    if callable(getattr(dataset, "class_of", None)):
        raw: Any = [dataset.class_of(i) for i in range(len(dataset))]  # type: ignore[attr-defined,arg-type]
    else:
        raw = next((getattr(dataset, a) for a in ("targets", "labels") if getattr(dataset, a, None) is not None), None)
    if raw is None:
        raise ConfigError(
            f"{key}=balanced needs the class of every training sample, but the training set ({name}) does not "
            "tell it: give the dataset a `targets` or `labels` sequence of integer classes or a `class_of(index)` "
            f"method, or remove {key}. Balanced sampling is for single-label data such as classification."
        )
    labels = [_single_label(v, key, name) for v in (raw.tolist() if hasattr(raw, "tolist") else list(raw))]
    if len(labels) != len(dataset):  # type: ignore[arg-type]
        raise ConfigError(f"{key}=balanced: {name} has {len(labels)} labels for {len(dataset)} samples.")  # type: ignore[arg-type]
    return labels


def _single_label(value: Any, key: str, name: str) -> int:
    if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(
            f"{key}=balanced needs one class index (an integer >= 0) per training sample, but {name} labels a "
            f"sample with {value!r}. Balanced sampling is for single-label data; remove {key} for this dataset."
        )
    return int(value)


class SeededDataset(Dataset):
    """Wraps a dataset so each batch reseeds python/numpy/torch RNGs and the dataset's `transform`, and tells a
    dataset with a `set_epoch(epoch)` method the epoch of the batch (in whichever process loads it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _seed_transform(self, seed: int) -> None:
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)

    def __getitems__(self, items: list[tuple[int, int, int]]) -> list[Any]:
        """Load one batch under its own seed.

        In a worker, python/numpy/torch RNGs are reseeded per batch, so augmentation does not depend on
        which worker serves the batch. In the main process (num_workers=0) batches are loaded in order
        and those RNGs are part of the checkpoint, so only the albumentations pipeline, whose private
        generator is not, is reseeded.
        """
        if not items:
            return []
        seed = items[0][1]
        if len(items[0]) > 2 and callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(items[0][2])  # type: ignore[attr-defined]  # e.g. mosaic closes in the last epochs
        if get_worker_info() is not None:
            random.seed(seed)
            np.random.seed(seed)
            # Only the CPU generator: torch.manual_seed also queues lazy CUDA/XPU seeding, which records
            # a stack trace per call (about 0.3 ms each), and data loading never draws from those devices.
            torch.default_generator.manual_seed(seed)
        self._seed_transform(seed)
        return [self.dataset[item[0]] for item in items]

    def __getitem__(self, item: tuple[int, int, int]) -> Any:
        return self.__getitems__([item])[0]


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    collate: Callable[[list[Any]], Any],
    num_workers: int,
    rank: int = 0,
    world: int = 1,
    train: bool = True,
    pin_memory: bool = False,
    labels: Sequence[int] | None = None,
) -> tuple[DataLoader, EpochBatchSampler]:
    """A DataLoader over `dataset` with a resumable, seeded batch sampler (returned alongside); with
    `labels` (one class per sample) the training batches are class-balanced (BalancedBatchSampler)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"data.batch_size must be a positive integer here, got {batch_size!r} ('auto' is chosen when training)."
        )
    sampler: EpochBatchSampler
    if labels is not None:
        sampler = BalancedBatchSampler(labels, batch_size, seed=seed, rank=rank, world=world)
    else:
        sampler = EpochBatchSampler(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world=world,
            drop_last=False,
            pad=train,
        )
    loader = DataLoader(
        SeededDataset(dataset),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
    return loader, sampler


def close_workers(*loaders: DataLoader | None) -> None:
    """Stop the persistent worker processes of finished loaders now, not whenever garbage collection finds them.

    Left to the collector, an abandoned iterator (a run stopped mid-epoch) shuts its workers down at some
    later allocation, one join timeout per worker, inside whatever runs then (the next run, the next test).
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None
