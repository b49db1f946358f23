"""The semantic segmentation task: builders, steps, metrics, sample overlays and file prediction."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from visionkit.data import expand_images
from visionkit.data.transforms import build_pipeline
from visionkit.engine.distributed import all_reduce_sum
from visionkit.errors import ConfigError
from visionkit.registry import TASKS
from visionkit.tasks.base import StepContext, Task
from visionkit.tasks.segmentation.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    read_image,
    to_tensor,
    to_uint8_image,
)
from visionkit.tasks.segmentation.metrics import SegmentationMetrics
from visionkit.tasks.segmentation.visualize import overlay, sample_grid, save_index_png


def logits_of(output: Any) -> torch.Tensor:
    """The main logits of a model output (a tensor, or a dict with key 'out')."""
    return output["out"] if isinstance(output, Mapping) else output


def resize_to(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinearly resize logits to the target size when they differ."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pad_collate(samples: list[dict[str, Any]], ignore_index: int | None) -> dict[str, Any]:
    """Stack samples, padding images (with 0) and masks (with ignore_index) at the bottom/right to the largest."""
    height = max(s["image"].shape[-2] for s in samples)
    width = max(s["image"].shape[-1] for s in samples)
    fill = 0 if ignore_index is None else ignore_index
    images = samples[0]["image"].new_zeros((len(samples), samples[0]["image"].shape[0], height, width))
    masks = torch.full((len(samples), height, width), fill, dtype=torch.long)
    for i, s in enumerate(samples):
        h, w = s["image"].shape[-2:]
        images[i, :, :h, :w] = s["image"]
        masks[i, : s["mask"].shape[-2], : s["mask"].shape[-1]] = s["mask"]
    return {"image": images, "mask": masks, "index": torch.tensor([int(s.get("index", -1)) for s in samples])}


@TASKS.register("segmentation", aliases=["seg"])
class SegmentationTask(Task):
    """Semantic segmentation: per-pixel classes, `ignore_index`, mIoU over the whole validation set."""

    name = "segmentation"
    monitor = "val/mIoU"
    monitor_mode = "max"
    defaults: ClassVar[dict[str, Any]] = {
        "model": {"name": "unet"},
        "loss": {"name": "ce"},
        "data": {
            "num_classes": 4,
            "class_names": None,
            "ignore_index": 255,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "segmentation": {"aux_weight": 0.4, "num_samples": 4, "overlay_alpha": 0.5},
    }

    # -- config ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return int(self.cfg["data"]["num_classes"])

    @property
    def ignore_index(self) -> int | None:
        """Target value that losses and metrics skip (None: every pixel counts)."""
        return self.cfg["data"]["ignore_index"]

    @property
    def class_names(self) -> list[str]:
        """Class names from data.class_names (or recorded from the dataset), else class_<i>."""
        names = self.cfg["data"]["class_names"]
        return list(names) if names else [f"class_{i}" for i in range(self.num_classes)]

    def validate(self) -> None:
        """Check class count, class names, ignore_index, normalisation and the task options."""
        data, opts = self.cfg["data"], self.cfg["segmentation"]
        n = data["num_classes"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ConfigError(f"data.num_classes must be an integer >= 2 (background included), got {n!r}.")
        names = data["class_names"]
        if names is not None and (not isinstance(names, list) or len(names) != n):
            raise ConfigError(f"data.class_names must be a list of data.num_classes={n} names, got {names!r}.")
        ignore = data["ignore_index"]
        if ignore is not None and (not isinstance(ignore, int) or 0 <= ignore < n):
            raise ConfigError(
                f"data.ignore_index is {ignore!r}; it must be null or an integer outside the class range "
                f"0..{n - 1} (255 is usual)."
            )
        if len(data["mean"]) != len(data["std"]) or any(float(s) <= 0 for s in data["std"]):
            raise ConfigError(f"data.mean {data['mean']} and data.std {data['std']} need equal lengths, std > 0.")
        if not isinstance(opts["num_samples"], int) or opts["num_samples"] < 0:
            raise ConfigError(f"segmentation.num_samples must be an integer >= 0, got {opts['num_samples']!r}.")
        if not 0 <= float(opts["overlay_alpha"]) <= 1 or float(opts["aux_weight"]) < 0:
            raise ConfigError("segmentation.overlay_alpha must lie in [0, 1] and segmentation.aux_weight be >= 0.")
        super().validate()
        self.build_loss()  # cheap; catches e.g. a class_weights list of the wrong length before training

    def model_defaults(self) -> dict[str, Any]:
        """Every model builder is offered num_classes."""
        return {"num_classes": self.num_classes}

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Dataset builders are offered the split, its transform pipeline, classes and normalisation."""
        data = self.cfg["data"]
        key = f"data.{split}_transforms"
        return {
            "split": split,
            "transforms": build_pipeline(data.get(f"{split}_transforms"), key=key),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "class_names": data["class_names"],
            "mean": list(data["mean"]),
            "std": list(data["std"]),
        }

    def loss_defaults(self) -> dict[str, Any]:
        """Loss builders are offered num_classes and ignore_index."""
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index}

    # -- builders -------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        """Build a split; class names the data defines (e.g. COCO categories) are recorded in the config."""
        dataset = super().build_dataset(split)
        names = getattr(dataset, "class_names", None)
        generic = [f"class_{i}" for i in range(self.num_classes)]
        if self.cfg["data"]["class_names"] is None and names and len(names) == self.num_classes and names != generic:
            self.cfg["data"]["class_names"] = list(names)  # saved with the run config and its checkpoints
        return dataset

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Build the loss and the metric state."""
        super().setup(model, device)
        self.device = device
        self.metrics = SegmentationMetrics(self.num_classes, self.ignore_index, self.class_names)
        self.last_scores: dict[str, Any] = {}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad to the largest sample of the batch (masks with ignore_index)."""
        return pad_collate(samples, self.ignore_index)

    # -- steps ----------------------------------------------------------------------------------
    def compute_losses(self, output: Any, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss of the main logits plus `segmentation.aux_weight` times the auxiliary head's loss."""
        main = self.loss_fn(resize_to(logits_of(output), mask.shape[-2:]), mask)
        aux = output.get("aux") if isinstance(output, Mapping) else None
        weight = float(self.cfg["segmentation"]["aux_weight"])
        if aux is None or weight == 0:
            return {"loss": main}
        aux_loss = self.loss_fn(resize_to(aux, mask.shape[-2:]), mask)
        return {"loss": main + weight * aux_loss, "loss_main": main.detach(), "loss_aux": aux_loss.detach()}

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Forward the images and return the (main + auxiliary) loss."""
        return self.compute_losses(ctx.model(batch["image"]), batch["mask"])

    def reset_metrics(self) -> None:
        """Clear the confusion matrix and the validation loss sums."""
        self.metrics.reset()
        self._loss_sum: torch.Tensor | float = 0.0
        self._batches = 0

    def validation_step(self, batch: dict[str, Any], ctx: StepContext) -> None:
        """Accumulate the confusion matrix and the loss of one batch."""
        mask = batch["mask"]
        logits = resize_to(logits_of(ctx.model(batch["image"])), mask.shape[-2:]).float()
        self.metrics.update(logits.argmax(dim=1), mask)
        self._loss_sum = self._loss_sum + self.loss_fn(logits, mask).detach()
        self._batches += 1

    def compute_metrics(self) -> dict[str, float]:
        """mIoU, pixel accuracy, mean class accuracy and loss over all ranks' batches."""
        device = getattr(self, "device", torch.device("cpu"))
        scores = self.metrics.compute(device)
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        totals[0] += torch.as_tensor(self._loss_sum, dtype=torch.float64, device=device)
        totals[1] += self._batches
        totals = all_reduce_sum(totals).cpu()
        self.last_scores = scores
        return {
            "val/mIoU": scores["mIoU"],
            "val/pixel_acc": scores["pixel_acc"],
            "val/mean_acc": scores["mean_acc"],
            "val/loss": float(totals[0] / totals[1]) if totals[1] > 0 else math.nan,
        }

    def per_class_table(self) -> str:
        """The last validation's per-class IoU as a small text table."""
        rows = self.last_scores.get("per_class", [])
        width = max([5, *(len(r["class"]) for r in rows)])
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}  {'pixels':>10}"]
        for r in rows:
            iou = "-" if math.isnan(r["iou"]) else f"{r['iou']:.4f}"
            acc = "-" if math.isnan(r["acc"]) else f"{r['acc']:.4f}"
            lines.append(f"{r['class']:<{width}}  {iou:>6}  {acc:>6}  {r['pixels']:>10}")
        return "\n".join(lines)

    def on_validation_end(self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int) -> None:
        """Print the per-class IoU table and write `samples/epoch_NNN.png` overlays of a few val images."""
        if self.last_scores:
            print(f"per-class IoU (epoch {epoch}):\n{self.per_class_table()}", flush=True)
        count = min(int(self.cfg["segmentation"]["num_samples"]), len(dataset))
        if count == 0:
            return
        net = ctx.model.module if isinstance(ctx.model, nn.parallel.DistributedDataParallel) else ctx.model
        mean, std = self.cfg["data"]["mean"], self.cfg["data"]["std"]
        rows = []
        was_training = net.training
        net.eval()
        with torch.no_grad():
            for index in range(count):
                sample = dataset[index]
                logits = logits_of(net(sample["image"].unsqueeze(0).to(ctx.device)))
                pred = resize_to(logits.float(), sample["mask"].shape[-2:]).argmax(1)[0].cpu().numpy()
                rows.append((to_uint8_image(sample["image"], mean, std), sample["mask"].numpy(), pred))
        net.train(was_training)
        grid = sample_grid(
            rows,
            self.num_classes,
            self.ignore_index,
            float(self.cfg["segmentation"]["overlay_alpha"]),
            self.class_names,
        )
        folder = Path(run_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        grid.save(folder / f"epoch_{epoch:03d}.png")

    def summary_extras(self) -> dict[str, Any]:
        """Per-class IoU table of the last validation, plus `val/IoU/<class>` scalars (null where undefined)."""
        rows = getattr(self, "last_scores", {}).get("per_class")
        if not rows:
            return {}
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        return {"per_class_iou": clean, **{f"val/IoU/{r['class']}": r["iou"] for r in clean}}

    # -- inference ------------------------------------------------------------------------------
    def predict_files(
        self, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]
    ) -> dict[str, Any]:
        """Write `masks/NAME.png` (class-index palette PNGs), `overlays/NAME.png` and predictions.json."""
        unknown = set(options) - {"alpha"}
        if unknown:
            raise ConfigError(f"Unknown segmentation predict option(s) {sorted(unknown)}; accepted: alpha.")
        alpha = float(options.get("alpha", self.cfg["segmentation"]["overlay_alpha"]))
        files = expand_images(inputs)
        out_dir = Path(out_dir)
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        mean, std = self.cfg["data"]["mean"], self.cfg["data"]["std"]
        names, used, results = self.class_names, set(), []
        for path in files:
            stem = path.stem
            while stem in used:
                stem += "_"
            used.add(stem)
            image = read_image(path)
            with torch.no_grad():
                logits = logits_of(model(to_tensor(image, mean, std).unsqueeze(0).to(device)))
                pred = resize_to(logits.float(), image.shape[:2]).argmax(1)[0].cpu().numpy().astype(np.uint8)
            save_index_png(pred, out_dir / "masks" / f"{stem}.png", self.num_classes)
            blended = overlay(image, pred, self.num_classes, None, alpha)
            Image.fromarray(blended).save(out_dir / "overlays" / f"{stem}.png")
            counts = np.bincount(pred.reshape(-1), minlength=self.num_classes)
            results.append(
                {
                    "input": str(path),
                    "mask": f"masks/{stem}.png",
                    "overlay": f"overlays/{stem}.png",
                    "size": [int(image.shape[1]), int(image.shape[0])],
                    "class_pixels": {names[i]: int(c) for i, c in enumerate(counts) if c},
                }
            )
        result = {"task": self.name, "class_names": names, "predictions": results}
        (out_dir / "predictions.json").write_text(json.dumps(result, indent=2))
        return result
