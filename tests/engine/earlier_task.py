"""A denoising task written against the earlier task protocol (plugin API 1.0), kept as it was written.

It keeps its own metric state (`reset_metrics`, a `validation_step` that accumulates into `self`,
`compute_metrics`), builds its model without the data facts, draws without results and predicts through
its own `predict_files`. The core must still train, evaluate, resume and predict it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

from visionkit.registry import DATASETS, MODELS, TASKS
from visionkit.tasks.base import StepContext, Task


@DATASETS.register("earlier_digits", task="earlier_denoise")
class NoisyDigits(Dataset):
    """scikit-learn's 8x8 digits scaled to [0, 1], with a fixed Gaussian noise per image."""

    def __init__(self, split: str = "train", size: int = 96, noise: float = 0.2) -> None:
        images = load_digits().images.astype(np.float32) / 16.0
        start = 0 if split == "train" else 1500
        self.clean = torch.from_numpy(images[start : start + size])[:, None]
        g = torch.Generator().manual_seed(1 if split == "train" else 2)
        self.noisy = (self.clean + noise * torch.randn(self.clean.shape, generator=g)).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.noisy[i], self.clean[i]


@MODELS.register("earlier_denoiser", task="earlier_denoise")
def denoiser(width: int = 16) -> nn.Module:
    """A small residual CNN."""
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1))


@TASKS.register("earlier_denoise")
class DenoiseTask(Task):
    """Denoising, scored by PSNR, in the earlier protocol."""

    name = "earlier_denoise"
    monitor = "val/psnr"
    monitor_mode = "max"
    defaults = {
        "model": {"name": "earlier_denoiser"},
        "data": {"train": {"name": "earlier_digits"}, "val": {"name": "earlier_digits", "split": "val", "size": 64}},
    }

    def model_defaults(self) -> dict[str, Any]:
        return {}

    def build_model(self) -> nn.Module:
        return MODELS.build(self.cfg["model"], key="model", task=self.scopes(), **self.model_defaults())

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        noisy, clean = batch
        return {"loss": nn.functional.mse_loss(noisy + ctx.model(noisy), clean)}

    def reset_metrics(self) -> None:
        self.se, self.pixels, self.images = 0.0, 0, 0

    def validation_step(self, batch: Any, ctx: StepContext) -> None:
        noisy, clean = batch
        restored = (noisy + ctx.model(noisy)).clamp(0, 1)
        self.se += float(((restored - clean) ** 2).sum())
        self.pixels += clean.numel()
        self.images += len(clean)

    def compute_metrics(self) -> dict[str, float]:
        mse = self.se / max(self.pixels, 1)
        return {"val/psnr": 10 * math.log10(1 / max(mse, 1e-12)), "val/loss": mse}

    def summary_extras(self) -> dict[str, Any]:
        return {"images_scored": [self.images]}

    def on_validation_end(self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int) -> None:
        (run_dir / "validated_epochs.txt").open("a").write(f"{epoch}\n")

    def predict_files(self, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]) -> dict:
        out_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for path in inputs:
            image = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)[None, None]
            restored = (image + model(image)).clamp(0, 1)[0, 0].numpy()
            Image.fromarray((restored * 255).round().astype(np.uint8)).save(out_dir / path.name)
            records.append({"input": str(path), "mean_change": float(np.abs(restored - image[0, 0].numpy()).mean())})
        (out_dir / "predictions.json").write_text(json.dumps(records))
        return {"predictions": records}
