"""Time the visionkit trainer against a hand-written PyTorch loop on the same model and data.

Each side runs N1 and N2 optimizer steps in this process; the per-step time is
(T(N2) - T(N1)) / (N2 - N1), which cancels set-up costs (building data, model, workers).
The trainer runs with its progress bar forced on and logging every 20 steps.
Usage: python benchmarks/trainer_overhead.py [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout

import torch
from torch import nn

import visionkit
from visionkit.registry import DATASETS, LOSSES, MODELS

CASES = {
    # name: (model spec, image size, batch size, steps N1, N2)
    "small_cnn": ({"name": "small_cnn", "width": 32, "depth": 3, "dropout": 0.0}, 32, 64, 10, 40),
    "tiny_mlp": ({"name": "mlp", "hidden": 32}, 8, 16, 200, 1200),
}


def config(model: dict, size: int, batch: int, steps: int, work_dir: str) -> dict:
    """A trainer config for the benchmark: no validation, progress bar and logging on."""
    return {
        "task": "classification",
        "model": model,
        "work_dir": work_dir,
        "data": {
            "train": {"name": "digits"},
            "val": None,
            "image_size": size,
            "batch_size": batch,
            "num_workers": 0,
            "train_transforms": [],
        },
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "scheduler": {"name": "constant"},
        "trainer": {"epochs": 1000, "max_steps": steps, "log_every": 20, "progress": "always", "device": "cpu"},
    }


def time_trainer(model: dict, size: int, batch: int, steps: int) -> float:
    """Wall time of visionkit.train for `steps` updates (output swallowed)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(model, size, batch, steps, tmp)
        sink = io.StringIO()
        start = time.perf_counter()
        with redirect_stdout(sink), redirect_stderr(sink):
            visionkit.train(cfg)
        return time.perf_counter() - start


def time_hand_loop(model_spec: dict, size: int, batch: int, steps: int) -> float:
    """Wall time of a plain PyTorch loop: same dataset class, model, optimizer and loss."""
    start = time.perf_counter()
    torch.manual_seed(0)
    dataset = DATASETS.build({"name": "digits"}, task="cls", split="train", image_size=size, transforms=[])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    model: nn.Module = MODELS.build(model_spec, task="cls", num_classes=10, in_chans=1, image_size=size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = LOSSES.build("cross_entropy", task="cls")
    model.train()
    done = 0
    while done < steps:
        for images, labels in loader:
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def per_step(fn, spec: tuple, repeats: int) -> list[float]:  # noqa: ANN001
    """Per-step seconds from the difference of two run lengths, `repeats` times."""
    model, size, batch, n1, n2 = spec
    out = []
    for _ in range(repeats):
        out.append((fn(model, size, batch, n2) - fn(model, size, batch, n1)) / (n2 - n1))
    return out


def main() -> None:
    """Run every case and print (and optionally save) the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--out")
    args = parser.parse_args()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cases": {},
    }
    for name in args.cases:
        spec = CASES[name]
        hand, trainer = [], []
        for _ in range(args.repeats):  # interleave so drifting machine load hits both sides alike
            hand += per_step(time_hand_loop, spec, 1)
            trainer += per_step(time_trainer, spec, 1)
        h, t = statistics.median(hand), statistics.median(trainer)
        results["cases"][name] = {
            "hand_ms_per_step": round(h * 1e3, 3),
            "trainer_ms_per_step": round(t * 1e3, 3),
            "added_ms_per_step": round((t - h) * 1e3, 3),
            "added_percent": round((t - h) / h * 100, 2),
            "runs_hand_ms": [round(x * 1e3, 3) for x in hand],
            "runs_trainer_ms": [round(x * 1e3, 3) for x in trainer],
        }
        print(
            f"{name:10s} hand {h * 1e3:8.3f} ms/step   trainer {t * 1e3:8.3f} ms/step   "
            f"added {(t - h) * 1e3:+.3f} ms ({(t - h) / h * 100:+.2f}%)",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
