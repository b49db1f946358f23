"""The `restoration` task (alias `restore`): denoising or 2x super-resolution, scored by PSNR and SSIM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from visionkit import TASKS, StepContext, Task, TensorInfo, image_spec
from visionkit.data.images import save_image, to_tensor, to_uint8_image
from visionkit_restoration.data import check_mode, comparison_grid
from visionkit_restoration.models import upscale


@TASKS.register("restoration", aliases=["restore"])
class RestorationTask(Task):
    """Restore degraded images: the data yields (degraded, clean) pairs, the model maps one to the other.

    `restoration.mode` picks the degradation: `denoise` (Gaussian noise of `restoration.noise_std`) or
    `sr2x` (2x2 average downscale, then the same noise; the model upscales 2x). At predict time the
    input files are the degraded images.
    """

    name = "restoration"
    monitor = "val/psnr"
    monitor_mode = "max"
    default_config = str(Path(__file__).resolve().parent / "configs" / "default.yaml")
    defaults = {
        "model": {"name": "residual_cnn"},
        "data": {"train": {"name": "shapes"}, "val": {"name": "shapes", "size": 200}, "image_size": None},
        "loss": {"name": "l1"},
        "metrics": ["psnr", "psnr_input", "ssim", "ssim_input"],
        "restoration": {"mode": "denoise", "noise_std": 0.1, "samples": 8},
    }

    def validate(self) -> None:
        """Check the degradation mode, then the component specs."""
        check_mode(self.cfg["restoration"]["mode"])
        super().validate()

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Offer the degradation, the declared image size and the run's seed to dataset builders."""
        r = self.cfg["restoration"]
        return {
            "split": split,
            "mode": r["mode"],
            "noise_std": r["noise_std"],
            "image_size": self.cfg["data"]["image_size"],
            "seed": self.cfg["trainer"]["seed"],
        }

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The loss between the restored and the clean images."""
        degraded, clean = batch
        return {"loss": self.loss_fn(ctx.model(degraded), clean)}

    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        """Loss, plus restored / target / degraded (upscaled to the target's size) images for the metrics."""
        degraded, clean = batch
        restored = ctx.model(degraded)
        return {
            "loss": self.loss_fn(restored, clean),
            "restored": restored.float().clamp(0, 1),
            "target": clean,
            "degraded": upscale(degraded, clean.shape[-2:]).clamp(0, 1),
        }

    def on_validation_end(
        self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int, results: dict[str, Any]
    ) -> None:
        """Save a picture of the first validation images: degraded | restored | clean, one row each."""
        count = min(self.cfg["restoration"]["samples"], len(dataset))  # type: ignore[arg-type]
        if count <= 0:
            return
        degraded, clean = (torch.stack(t).to(ctx.device) for t in zip(*(dataset[i] for i in range(count))))
        with torch.no_grad():
            out = self.validation_step((degraded, clean), ctx)
        grid = comparison_grid(out["degraded"].cpu(), out["restored"].cpu(), clean.cpu())
        save_image(grid, run_dir / "samples" / f"epoch_{epoch:03d}.png")

    # -- prediction: the core reads, batches and writes; the inputs are the degraded images -------------
    def preprocess(self, image: np.ndarray, options: dict[str, Any]) -> torch.Tensor:
        """An HWC uint8 degraded image -> a CHW float tensor in [0, 1] (no resizing: the model keeps detail)."""
        return to_tensor(image)

    def postprocess(self, output: torch.Tensor, image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """Sizes (width, height) in and out and the mean absolute change (0-255) from the upscaled input."""
        restored = output.float().clamp(0, 1).cpu()
        given = upscale(to_tensor(image)[None], restored.shape[-2:])[0].clamp(0, 1)
        return {
            "mode": self.cfg["restoration"]["mode"],
            "input_size": [int(image.shape[1]), int(image.shape[0])],
            "size": [int(restored.shape[-1]), int(restored.shape[-2])],
            "mean_abs_change": round(float((restored - given).abs().mean()) * 255, 3),
        }

    def draw(self, image: np.ndarray, output: torch.Tensor, options: dict[str, Any]) -> dict[str, Any]:
        """The restored image, saved by the core as restored/<input path>.png."""
        return {"restored": to_uint8_image(output)}

    def export_spec(self, model: torch.nn.Module, options: Any) -> Any:
        """Export signature: degraded images in [0, 1], any size, in; restored images out."""
        c, sr = int(self.facts.channels or 3), self.cfg["restoration"]["mode"] == "sr2x"
        meaning = f"restored images in [0, 1] at {'twice' if sr else ''} the input size"
        out = TensorInfo("restored", [c, "out_height", "out_width"], "float32", meaning.replace("  ", " "))
        size = int(options.image_size or self.facts.image_size or 32)
        return image_spec(model, options, channels=c, size=size, output=out, dynamic_size=True)
