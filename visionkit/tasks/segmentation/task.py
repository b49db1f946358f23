"""The semantic segmentation task: builders, data facts, steps, sample overlays and prediction."""

from __future__ import annotations

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

from visionkit.data.facts import DataFacts, declared_facts, facts_of, resolve_facts
from visionkit.data.images import as_rgb, to_tensor, to_uint8_image
from visionkit.data.transforms import build_pipeline
from visionkit.engine.contracts import StepContext, Task
from visionkit.engine.export_spec import TensorInfo, image_spec
from visionkit.engine.precision import device_of
from visionkit.errors import ConfigError
from visionkit.registry import TASKS
from visionkit.tasks.segmentation.datasets import IMAGENET_MEAN, IMAGENET_STD
from visionkit.tasks.segmentation.visualize import index_png, overlay, sample_grid, with_legend


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


def generic_names(count: int) -> list[str]:
    """The placeholder names class_0 .. class_<count-1> a dataset uses when it names no classes."""
    return [f"class_{i}" for i in range(count)]


def named_facts(dataset: Dataset | None) -> DataFacts:
    """Facts a dataset tells, without placeholder class names (masks alone do not tell the class count)."""
    found = facts_of(dataset)
    if found.class_names and found.class_names == generic_names(len(found.class_names)):
        found = found.replace(class_names=None, num_classes=None)
    return found


def per_class_table(rows: list[dict[str, Any]]) -> str:
    """A per-class IoU table (rows of class, iou, acc, pixels; None where undefined) as text."""
    width = max([5, *(len(str(r["class"])) for r in rows)])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}  {'pixels':>10}"]
    for r in rows:
        iou, acc = (
            "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}" for v in (r["iou"], r["acc"])
        )
        lines.append(f"{r['class']:<{width}}  {iou:>6}  {acc:>6}  {r['pixels']:>10}")
    return "\n".join(lines)


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
        "metrics": ["miou"],
        "segmentation": {"aux_weight": 0.4, "num_samples": 4, "overlay_alpha": 0.5},
    }
    # alpha None: segmentation.overlay_alpha; legend: overlays scaled to a 512 px short side with a class legend
    predict_options: ClassVar[dict[str, Any]] = {"alpha": None, "legend": True}
    predict_stack: ClassVar[bool] = False  # images keep their own sizes; predict_batch groups equal shapes

    # -- config ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes, background included (from the data facts once known, else data.num_classes)."""
        return int(self.facts.num_classes or self.cfg["data"]["num_classes"])

    @property
    def ignore_index(self) -> int | None:
        """Target value that losses and metrics skip (None: every pixel counts)."""
        return self.cfg["data"]["ignore_index"]

    @property
    def class_names(self) -> list[str]:
        """Class names from the data facts (declared or from the data), else class_<i>."""
        if self.facts.num_classes:
            return self.facts.names
        names = self.cfg["data"]["class_names"]
        return list(names) if names else generic_names(self.num_classes)

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

    def model_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """Every model builder is offered num_classes."""
        return {"num_classes": facts.num_classes or self.cfg["data"]["num_classes"]}

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Dataset builders are offered the split, its transform pipeline, classes and normalisation."""
        data = self.cfg["data"]
        key = f"data.{split}_transforms"
        return {
            "split": split,
            "transforms": build_pipeline(data.get(f"{split}_transforms"), key=key),
            "num_classes": int(data["num_classes"]),
            "ignore_index": self.ignore_index,
            "class_names": data["class_names"],
            "mean": list(data["mean"]),
            "std": list(data["std"]),
        }

    def loss_defaults(self) -> dict[str, Any]:
        """Loss builders are offered num_classes and ignore_index."""
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index}

    def metric_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """Metric builders are offered the data facts and ignore_index."""
        return {**super().metric_defaults(facts), "ignore_index": self.ignore_index}

    # -- data facts -----------------------------------------------------------------------------
    def data_facts(self, train: Dataset | None, val: Dataset | None) -> DataFacts:
        """data.num_classes (masks do not tell it); class names the data defines (e.g. COCO categories), not class_<i>.

        A dataset that names a different number of classes than data.num_classes is a DataError.
        """
        facts = resolve_facts(
            declared_facts(self.cfg["data"]), named_facts(train), named_facts(val) if val is not None else None
        )
        if facts.channels is None:
            facts = facts.replace(channels=len(facts.mean or IMAGENET_MEAN))
        return facts

    # -- builders -------------------------------------------------------------------------------
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

    def validation_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """The batch-mean loss of the main logits, the argmax class map and the target mask."""
        mask = batch["mask"]
        logits = resize_to(logits_of(ctx.model(batch["image"])), mask.shape[-2:]).float()
        return {"loss": self.loss_fn(logits, mask).detach(), "pred": logits.argmax(dim=1), "target": mask}

    def on_validation_end(
        self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int, results: dict[str, Any]
    ) -> None:
        """Print the per-class IoU table and write `samples/epoch_NNN.png` overlays of a few val images."""
        if results.get("per_class_iou"):
            print(f"per-class IoU (epoch {epoch}):\n{per_class_table(results['per_class_iou'])}", flush=True)
        count = min(int(self.cfg["segmentation"]["num_samples"]), len(dataset))
        if count == 0:
            return
        net = ctx.model.module if isinstance(ctx.model, nn.parallel.DistributedDataParallel) else ctx.model
        rows = []
        was_training = net.training
        net.eval()
        with torch.no_grad():
            for index in range(count):
                sample = dataset[index]
                logits = logits_of(net(sample["image"].unsqueeze(0).to(ctx.device)))
                pred = resize_to(logits.float(), sample["mask"].shape[-2:]).argmax(1)[0].cpu().numpy()
                image = to_uint8_image(sample["image"], self.facts.mean, self.facts.std)
                rows.append((as_rgb(image), sample["mask"].numpy(), pred))
        net.train(was_training)
        alpha = float(self.cfg["segmentation"]["overlay_alpha"])
        grid = sample_grid(rows, self.num_classes, self.ignore_index, alpha, self.class_names)
        folder = Path(run_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        grid.save(folder / f"epoch_{epoch:03d}.png")

    # -- prediction (the core Predictor walks, reads, batches and names the files) ---------------
    def preprocess(self, image: np.ndarray, options: dict[str, Any]) -> torch.Tensor:
        """An HWC uint8 image at its own size -> a normalised CHW tensor (mean/std of the data facts)."""
        channels = len(self.facts.mean or IMAGENET_MEAN)
        return to_tensor(as_rgb(image) if channels == 3 else image, self.facts.mean, self.facts.std)

    def predict_batch(self, model: nn.Module, inputs: list[torch.Tensor], options: dict[str, Any]) -> list[Any]:
        """Class-index maps (HxW uint8) at each input's size; inputs of equal size share a forward pass."""
        device = device_of(model)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        outputs: list[Any] = [None] * len(inputs)
        for shape, members in groups.items():
            logits = logits_of(model(torch.stack([inputs[i] for i in members]).to(device)))
            preds = resize_to(logits.float(), shape[-2:]).argmax(1).cpu().numpy().astype(np.uint8)
            for pred, i in zip(preds, members, strict=True):
                outputs[i] = pred
        return outputs

    def postprocess(self, output: np.ndarray, image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """The image size [width, height] and the predicted pixel count of each class present."""
        counts = np.bincount(output.reshape(-1), minlength=self.num_classes)
        names = self.class_names
        return {
            "size": [int(image.shape[1]), int(image.shape[0])],
            "class_pixels": {names[i]: int(c) for i, c in enumerate(counts) if c},
        }

    def export_spec(self, model: nn.Module, options: Any) -> Any:
        """Normalised images [N, C, H, W] of any size in; per-pixel logits (or probabilities) at the input size out."""
        what = "probabilities" if options.softmax else "logits"
        return image_spec(
            PixelScores(model, options.softmax),
            options,
            channels=int(self.facts.channels or len(self.facts.mean or IMAGENET_MEAN)),
            size=int(options.image_size or self.facts.image_size or 64),
            dynamic_size=True,
            spatial_output=True,
            output=TensorInfo(what, [self.num_classes], "float32", f"per-pixel class {what} at the input size"),
            input_meaning=f"pixels /255, minus mean {self.facts.mean}, divided by std {self.facts.std}; any size",
        )

    def draw(self, image: np.ndarray, output: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """A class-index palette PNG (`masks`) and the class colours blended over the image (`overlays`)."""
        alpha = options.get("alpha")
        alpha = float(self.cfg["segmentation"]["overlay_alpha"] if alpha is None else alpha)
        if not 0 <= alpha <= 1:
            raise ConfigError(f"The predict option alpha must lie in [0, 1], got {alpha}.")
        masks: Image.Image = index_png(output, self.num_classes)
        blended = overlay(as_rgb(image), output, self.num_classes, None, alpha)
        if options.get("legend", True):  # scaled up for reading, the classes present named below
            names = self.facts.class_names
            return {"masks": masks, "overlays": with_legend(blended, output, self.num_classes, names, 512)}
        return {"masks": masks, "overlays": blended}


class PixelScores(nn.Module):
    """A segmenter's main logits resized to the input (or their softmax), as one exported output."""

    def __init__(self, model: nn.Module, softmax: bool) -> None:
        super().__init__()
        self.model, self.softmax = model, softmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores at the input size."""
        logits = resize_to(logits_of(self.model(images)), images.shape[-2:])
        return logits.softmax(1) if self.softmax else logits
