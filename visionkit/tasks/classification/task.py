"""The classification task: images in, class logits out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from visionkit.data.images import read_image, to_tensor
from visionkit.data.transforms import build_pipeline
from visionkit.engine.contracts import StepContext, Task
from visionkit.engine.export_spec import TensorInfo, image_spec
from visionkit.engine.precision import device_of
from visionkit.errors import ConfigError
from visionkit.registry import TASKS
from visionkit.tasks.classification.visualize import confusion_matrix_image, prediction_grid

GRID_IMAGES = 64  # images shown in predictions.png


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
            "num_classes": None,  # null: from the training set
            "class_names": None,
            "channels": None,
            "image_size": None,  # resize to this square size; filled in from the data when null
            "mean": [0.5],
            "std": [0.5],
        },
        "loss": {"name": "cross_entropy"},
        "metrics": [{"name": "accuracy", "topk": [1, 5]}, "per_class_accuracy", "confusion_matrix"],
    }
    predict_options = {"topk": 5}

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Offer split, transforms, the declared resize, channel count and normalisation to every dataset builder.

        Builders take only the keys they name, so one without `channels` is unaffected; a dataset spec's own
        `channels` (data.train.channels) wins over data.channels.
        """
        d = self.cfg["data"]
        return {
            "split": split,
            "transforms": d[f"{split}_transforms"],
            "image_size": d["image_size"],
            "channels": d.get("channels"),
            "mean": d["mean"],
            "std": d["std"],
        }

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Cross-entropy of the model's logits."""
        images, labels = batch
        return {"loss": self.loss_fn(ctx.model(images), labels)}

    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        """The batch's mean loss, logits and targets for the metrics."""
        images, labels = batch
        logits = ctx.model(images)
        return {"loss": self.loss_fn(logits.float(), labels), "logits": logits, "target": labels}

    def on_validation_end(
        self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int, results: dict[str, Any]
    ) -> None:
        """Draw the confusion matrix of this validation (when the `confusion_matrix` metric ran)."""
        confusion = results.get("confusion_matrix")
        if confusion is not None:
            confusion_matrix_image(torch.as_tensor(confusion), self.facts.names, run_dir / "confusion_matrix.png")

    # -- prediction -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, options: dict[str, Any]) -> torch.Tensor:
        """Resize to the model's square size (facts.image_size) and normalise with facts.mean/std."""
        size = self.facts.image_size
        if size:
            if getattr(self, "_resize_size", None) != size:
                self._resize = build_pipeline([{"name": "Resize", "height": size, "width": size}])
                self._resize_size = size
            image = self._resize(image=image)["image"]
        return to_tensor(image, self.facts.mean, self.facts.std)

    def predict_batch(self, model: nn.Module, inputs: list[Any], options: dict[str, Any]) -> list[Any]:
        """Class probabilities (softmax of the logits) for each input, on the CPU."""
        x = torch.stack(inputs).to(device_of(model))
        return list(model(x).float().softmax(1).cpu())

    def postprocess(self, output: torch.Tensor, image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """{"top": [{"label", "name", "score"}, ...]}: the `topk` most likely classes (at most all of them)."""
        topk = int(options["topk"])
        if topk < 1:
            raise ConfigError(f"Predict option topk must be at least 1, got {options['topk']!r}.")
        scores, labels = output.topk(min(topk, output.numel()))
        names = self.facts.names
        return {
            "top": [
                {"label": int(li), "name": names[li] if li < len(names) else str(li), "score": round(si, 6)}
                for si, li in zip(scores.tolist(), labels.tolist())
            ]
        }

    def export_spec(self, model: nn.Module, options: Any) -> Any:
        """Normalised images [N, C, S, S] in (S: facts.image_size or --image-size), logits or probabilities out."""
        size = options.image_size or self.facts.image_size
        if not size:
            raise ConfigError("The checkpoint records no image size (data facts); pass --image-size to export.")
        what = "probabilities" if options.softmax else "logits"
        mean, std = self.facts.mean, self.facts.std
        return image_spec(
            Scores(model, options.softmax),
            options,
            channels=int(self.facts.channels or 3),
            size=int(size),
            output=TensorInfo(
                what, [len(self.facts.names)], "float32", f"class {what}, in the order of data.class_names"
            ),
            input_meaning=f"RGB/grey pixels /255, minus mean {mean}, divided by std {std}; resized to the model size",
        )

    def finish_predictions(self, records: list[dict[str, Any]], out_dir: Path, options: dict[str, Any]) -> dict:
        """Write predictions.png: the first images with their top-1 label and score, as a grid."""
        if not records:
            return {}
        shown = records[:GRID_IMAGES]
        images = [read_image(r["input"], self.facts.channels) for r in shown]
        path = out_dir / "predictions.png"
        prediction_grid(images, [r["top"][0] for r in shown], path, max_images=GRID_IMAGES)
        return {"grid": str(path)}


class Scores(nn.Module):
    """A classifier's logits, or their softmax, as one exported output."""

    def __init__(self, model: nn.Module, softmax: bool) -> None:
        super().__init__()
        self.model, self.softmax = model, softmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of normalised images."""
        logits = self.model(images)
        return logits.softmax(1) if self.softmax else logits
