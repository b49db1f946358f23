"""A toy task built only on the documented Task interface: colour classification of flat images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from visionkit import Metric, StepContext, Task
from visionkit.data.images import to_tensor
from visionkit.registry import DATASETS, METRICS, MODELS, TASKS

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class ColourSet(Dataset):
    """Flat noisy images of three colours."""

    class_names = list(COLOURS)
    channels = 3

    def __init__(self, split: str = "train", size: int = 8, count: int = 48) -> None:
        rng = np.random.default_rng(0 if split == "train" else 1)
        self.labels = rng.integers(0, 3, count)
        base = np.array(list(COLOURS.values()), np.float32)[self.labels]
        noise = rng.normal(0, 20, (count, size, size, 3))
        self.images = np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.images[i], [0.5] * 3, [0.5] * 3), int(self.labels[i])


class ToyAccuracy(Metric):
    """Accuracy over the validation set."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.add_state("hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs: dict[str, Any]) -> None:
        self.hits += (outputs["logits"].argmax(1) == outputs["target"]).sum()
        self.count += outputs["target"].numel()

    def compute(self) -> dict[str, Any]:
        return {"acc": float(self.hits) / max(int(self.count), 1), "count": int(self.count), "table": [int(self.hits)]}


class Linear(nn.Module):
    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_chans, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3)))


class ToyTask(Task):
    """Pick the colour of an image."""

    name = "toy"
    monitor = "val/acc"
    monitor_mode = "max"
    defaults = {
        "model": {"name": "toy_linear"},
        "data": {"train": {"name": "colours"}, "val": {"name": "colours"}, "mean": [0.5] * 3, "std": [0.5] * 3},
        "loss": None,
        "metrics": ["toy_accuracy"],
        "toy": {"skip_from": 0},
    }
    predict_options = {"topk": 1}

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor] | None:
        images, labels = batch
        if 0 < self.cfg["toy"]["skip_from"] <= ctx.step:
            return None  # e.g. a task that decides a batch is unusable
        return {"loss": nn.functional.cross_entropy(ctx.model(images), labels)}

    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        images, labels = batch
        logits = ctx.model(images)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits, "target": labels}

    def postprocess(self, output: torch.Tensor, image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        label = int(output.argmax())
        return {"label": label, "name": self.facts.names[label]}

    def draw(self, image: np.ndarray, output: torch.Tensor, options: dict[str, Any]) -> dict[str, Any]:
        return {"images": image}


def register() -> None:
    """Register the toy components (idempotent)."""
    if "toy" in TASKS:
        return
    TASKS.register("toy", ToyTask)
    DATASETS.register("colours", ColourSet, task="toy")
    MODELS.register("toy_linear", Linear, task="toy")
    METRICS.register("toy_accuracy", ToyAccuracy, task="toy")


class NoPredictTask(ToyTask):
    """The toy task without any prediction methods."""

    name = "toy_nopredict"
    postprocess = Task.postprocess  # type: ignore[assignment]


def register_nopredict() -> None:
    """Register the task that cannot predict."""
    register()
    if "toy_nopredict" not in TASKS:
        TASKS.register("toy_nopredict", NoPredictTask)
