"""Time the visionkit trainer against a hand-written PyTorch loop (and Lightning) on the same model and data.

Each side runs N1 and N2 optimizer steps in this process; the per-step time is
(T(N2) - T(N1)) / (N2 - N1), which cancels set-up costs (building data, model, workers).
The trainer runs with its progress bar forced on and logging every 20 steps. When `lightning` is
installed it is timed too, two ways: barebones, and with its progress bar, logger and checkpointing
(in child processes, since importing Lightning slows everything else in a process).
Usage: python benchmarks/trainer_overhead.py [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch
from torch import nn

import visionkit
from visionkit.registry import DATASETS, LOSSES, MODELS

ROOT = str(Path(__file__).resolve().parent.parent)
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


def _parts(model_spec: dict, size: int, batch: int) -> tuple:
    """The same dataset loader, model and loss the trainer builds."""
    torch.manual_seed(0)
    dataset = DATASETS.build({"name": "digits"}, task="cls", split="train", image_size=size, transforms=[])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    model: nn.Module = MODELS.build(model_spec, task="cls", num_classes=10, in_chans=1, image_size=size)
    return loader, model, LOSSES.build("cross_entropy", task="cls")


def time_hand_loop(model_spec: dict, size: int, batch: int, steps: int) -> float:
    """Wall time of a plain PyTorch loop: same dataset class, model, optimizer and loss."""
    start = time.perf_counter()
    loader, model, loss_fn = _parts(model_spec, size, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
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


def time_lightning(model_spec: dict, size: int, batch: int, steps: int, full: bool = False) -> float:
    """Wall time of lightning.Trainer.fit: barebones, or (full) with progress bar, CSV logger and checkpoints."""
    import logging
    import warnings

    import lightning as L

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # its banners bypass redirect_stderr
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    class Module(L.LightningModule):
        def __init__(self, net: nn.Module, loss_fn: nn.Module) -> None:
            super().__init__()
            self.net, self.loss_fn = net, loss_fn

        def training_step(self, batch: tuple, index: int) -> torch.Tensor:
            images, labels = batch
            loss = self.loss_fn(self.net(images), labels)
            if full:
                self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    with tempfile.TemporaryDirectory() as tmp:
        sink = io.StringIO()
        start = time.perf_counter()
        with redirect_stdout(sink), redirect_stderr(sink):
            loader, model, loss_fn = _parts(model_spec, size, batch)
            options = dict(barebones=True) if not full else dict(log_every_n_steps=20, enable_model_summary=False)
            trainer = L.Trainer(
                accelerator="cpu", devices=1, max_steps=steps, default_root_dir=tmp, num_sanity_val_steps=0, **options
            )
            trainer.fit(Module(model, loss_fn), loader)
        return time.perf_counter() - start


def lightning_child(full: bool) -> Any:
    """A timing function that runs `time_lightning` in a fresh process and reads back its seconds."""

    def run(model: dict, size: int, batch: int, steps: int) -> float:
        args = json.dumps([model, size, batch, steps, full])
        code = f"import json, sys; sys.path.insert(0, {ROOT!r}); from benchmarks.trainer_overhead import "
        code += f"time_lightning; print(time_lightning(*json.loads({args!r})))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return float(done.stdout.strip().splitlines()[-1])

    return run


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
    if importlib.util.find_spec("lightning") is not None:
        # Lightning runs in child processes: importing it slows the other sides of the same process.
        sides = {"hand": time_hand_loop, "trainer": time_trainer, "lightning": lightning_child(False)}
        sides["lightning_full"] = lightning_child(True)
    else:
        sides = {"hand": time_hand_loop, "trainer": time_trainer}
        print("lightning is not installed: timing the hand loop and the trainer only", flush=True)
    for name in args.cases:
        spec = CASES[name]
        runs: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.repeats):  # interleave so drifting machine load hits every side alike
            for side, fn in sides.items():
                runs[side] += per_step(fn, spec, 1)
        med = {side: statistics.median(values) for side, values in runs.items()}
        h = med["hand"]
        results["cases"][name] = {
            **{f"{side}_ms_per_step": round(m * 1e3, 3) for side, m in med.items()},
            **{f"{side}_added_ms_per_step": round((m - h) * 1e3, 3) for side, m in med.items() if side != "hand"},
            "trainer_added_percent": round((med["trainer"] - h) / h * 100, 2),
            **{f"runs_{side}_ms": [round(x * 1e3, 3) for x in values] for side, values in runs.items()},
        }
        shown = "   ".join(f"{side} {m * 1e3:8.3f} ms ({(m - h) * 1e3:+.3f})" for side, m in med.items())
        print(f"{name:10s} {shown}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
