"""PSNR and SSIM for the restoration task: torchmetrics' image metrics reading a validation step's outputs.

Each reads `target` and either `restored` (the model's output) or `degraded` (the input, upscaled to the
target's size: the baseline a model must beat). Images are in [0, 1]; both scores are per-image means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from visionkit import METRICS, Metric


@METRICS.register("psnr", task="restoration")
class PSNR(Metric, PeakSignalNoiseRatio):
    """Peak signal-to-noise ratio in dB of the restored images (val/psnr), averaged over images."""

    key, source = "psnr", "restored"

    def __init__(self, data_range: float = 1.0) -> None:
        super().__init__(data_range=data_range, dim=(1, 2, 3))  # per image, then the mean over images

    def update(self, outputs: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Add one batch's `restored` (or `degraded`) images against their `target`."""
        PeakSignalNoiseRatio.update(self, outputs[self.source].float(), outputs["target"].float())

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """{key: mean PSNR}, reduced over ranks by torchmetrics."""
        return {self.key: PeakSignalNoiseRatio.compute(self)}


@METRICS.register("psnr_input", task="restoration")
class InputPSNR(PSNR):
    """PSNR of the degraded inputs (val/psnr_input): the baseline that val/psnr improves on."""

    key, source = "psnr_input", "degraded"


@METRICS.register("ssim", task="restoration")
class SSIM(Metric, StructuralSimilarityIndexMeasure):
    """Structural similarity of the restored images (val/ssim; Gaussian 11x11 window), averaged over images."""

    key, source = "ssim", "restored"

    def __init__(self, data_range: float = 1.0) -> None:
        super().__init__(data_range=data_range)

    def update(self, outputs: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Add one batch's `restored` (or `degraded`) images against their `target`."""
        StructuralSimilarityIndexMeasure.update(self, outputs[self.source].float(), outputs["target"].float())

    def compute(self) -> dict[str, Any]:  # type: ignore[override]
        """{key: mean SSIM}, reduced over ranks by torchmetrics."""
        return {self.key: StructuralSimilarityIndexMeasure.compute(self)}


@METRICS.register("ssim_input", task="restoration")
class InputSSIM(SSIM):
    """SSIM of the degraded inputs (val/ssim_input)."""

    key, source = "ssim_input", "degraded"
