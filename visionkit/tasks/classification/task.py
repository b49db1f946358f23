"""The classification task: images in, class logits out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from visionkit.data import expand_images
from visionkit.data.transforms import build_pipeline
from visionkit.errors import DataError
from visionkit.registry import TASKS
from visionkit.tasks.base import StepContext, Task
from visionkit.tasks.classification.datasets import read_image, to_tensor
from visionkit.tasks.classification.metrics import ClassificationMetrics
from visionkit.tasks.classification.visualize import confusion_matrix_image, prediction_grid


@TASKS.register("classification", aliases=["cls"])
class ClassificationTask(Task):
    """Single-label image classification with top-1/top-5 accuracy and a confusion matrix."""

    name = "classification"
    monitor = "val/top1"
    monitor_mode = "max"
    defaults = {
        "model": {"name": "small_cnn"},
        "data": {
            "train": {"name": "digits"},
            "val": {"name": "digits"},
            "num_classes": None,  # filled in from the training set
            "class_names": None,
            "channels": None,
            "image_size": None,  # resize to this square size; filled in from the data when null
            "mean": [0.5],
            "std": [0.5],
        },
        "loss": {"name": "cross_entropy"},
    }

    def model_defaults(self) -> dict[str, Any]:
        """Offer num_classes, in_chans and image_size to every model builder."""
        d = self.cfg["data"]
        return {
            "num_classes": d["num_classes"] or 10,
            "in_chans": d["channels"] or 3,
            "image_size": d["image_size"] or 32,
        }

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Offer split, transforms, resize and normalisation to every dataset builder."""
        d = self.cfg["data"]
        return {
            "split": split,
            "transforms": d[f"{split}_transforms"],
            "image_size": d["image_size"],
            "mean": d["mean"],
            "std": d["std"],
        }

    def build_dataset(self, split: str) -> Dataset:
        """Build a dataset and record its classes, channels and image size in the config."""
        dataset = super().build_dataset(split)
        d = self.cfg["data"]
        classes = list(getattr(dataset, "classes", []) or [])
        if classes:
            if d["num_classes"] not in (None, len(classes)) and split == "train":
                raise DataError(
                    f"data.num_classes is {d['num_classes']} but data.train has {len(classes)} classes {classes}."
                )
            if d["class_names"] and split == "val" and list(d["class_names"]) != classes:
                raise DataError(f"data.val classes {classes} differ from data.train classes {d['class_names']}.")
            d["num_classes"] = d["num_classes"] or len(classes)
            d["class_names"] = d["class_names"] or classes
        if len(dataset):  # type: ignore[arg-type]
            d["channels"] = d["channels"] or getattr(dataset, "channels", None)
            d["image_size"] = d["image_size"] or getattr(dataset, "image_size", None)
        return dataset

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Build the loss and the metric accumulator."""
        super().setup(model, device)
        self.metrics = ClassificationMetrics(self.cfg["data"]["num_classes"])

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Cross-entropy of the model's logits."""
        images, labels = batch
        return {"loss": self.loss_fn(ctx.model(images), labels)}

    def reset_metrics(self) -> None:
        """Clear accuracy and loss sums."""
        self.metrics.reset()
        self.loss_sum = torch.zeros((), dtype=torch.float64)

    def validation_step(self, batch: Any, ctx: StepContext) -> None:
        """Accumulate top-k hits, the confusion matrix and the loss."""
        images, labels = batch
        logits = ctx.model(images)
        self.metrics.update(logits, labels)
        self.loss_sum += float(self.loss_fn(logits.float(), labels)) * len(labels)

    def compute_metrics(self) -> dict[str, float]:
        """val/top1, val/top5 and val/loss over the whole validation set."""
        from visionkit.engine.distributed import all_reduce_sum

        out = self.metrics.compute()
        total = all_reduce_sum(self.loss_sum.clone())
        return {**out, "val/loss": float(total) / max(int(self.metrics.count), 1)}

    def on_validation_end(self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int) -> None:
        """Draw the confusion matrix of this validation."""
        confusion_matrix_image(
            self.metrics.confusion, self.cfg["data"]["class_names"], run_dir / "confusion_matrix.png"
        )

    def summary_extras(self) -> dict[str, Any]:
        """Per-class accuracy and the confusion matrix of the last validation."""
        if not hasattr(self, "metrics") or int(self.metrics.count) == 0:
            return {}
        names = self.cfg["data"]["class_names"]
        return {
            "per_class_accuracy": dict(zip(names, self.metrics.per_class_accuracy())),
            "confusion_matrix": self.metrics.confusion.tolist(),
        }

    def predict_files(
        self, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]
    ) -> dict[str, Any]:
        """Top-k labels for image files (folders are expanded); writes predictions.json and predictions.png."""
        d = self.cfg["data"]
        files = expand_images(inputs)
        size = d["image_size"]
        resize = build_pipeline([{"name": "Resize", "height": size, "width": size}]) if size else None
        mean, std = np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32)
        k = min(int(options.get("topk", 5)), d["num_classes"])
        device = next(model.parameters()).device
        results, images = [], []
        batch_size = int(options.get("batch_size", 64))
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            raw = [read_image(f, d["channels"]) for f in chunk]
            x = torch.stack([to_tensor(resize(image=r)["image"] if resize else r, mean, std) for r in raw]).to(device)
            with torch.no_grad():
                probs = model(x).float().softmax(1).cpu()
            scores, labels = probs.topk(k, dim=1)
            for f, r, s, lab in zip(chunk, raw, scores.tolist(), labels.tolist()):
                top = [
                    {"label": int(li), "name": d["class_names"][li], "score": round(si, 6)} for si, li in zip(s, lab)
                ]
                results.append({"file": str(f), "top": top})
                images.append(r)
        out_dir.mkdir(parents=True, exist_ok=True)
        import json

        (out_dir / "predictions.json").write_text(json.dumps(results, indent=2) + "\n")
        prediction_grid(images, [r["top"][0] for r in results], out_dir / "predictions.png")
        return {
            "predictions": results,
            "json": str(out_dir / "predictions.json"),
            "grid": str(out_dir / "predictions.png"),
        }
