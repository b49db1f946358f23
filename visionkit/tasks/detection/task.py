"""The object detection task: torchvision detectors, COCO-style evaluation, sample drawings and file prediction."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from visionkit.engine.distributed import all_gather_objects
from visionkit.errors import ConfigError
from visionkit.registry import TASKS
from visionkit.tasks.base import StepContext, Task
from visionkit.tasks.detection.evaluation import STAT_NAMES, coco_evaluate, to_coco_results
from visionkit.tasks.detection.visualize import draw_boxes, grid


def collate_detection(samples: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Keep images and targets as lists: detectors take images of different sizes and box counts."""
    return [s[0] for s in samples], [s[1] for s in samples]


def original_scale(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(x, y) factors from the transformed image back to the annotated one (val transforms may resize)."""
    height, width = (int(v) for v in target["orig_size"])
    return width / image.shape[-1], height / image.shape[-2]


@TASKS.register("detection", aliases=["det"])
class DetectionTask(Task):
    """Object detection: lists of images and box targets; the model computes its losses; COCO mAP on val."""

    name = "detection"
    monitor = "val/mAP"
    monitor_mode = "max"
    defaults: ClassVar[dict[str, Any]] = {
        "model": {"name": "fcos"},
        "data": {
            "train": {"name": "shapes"},
            "val": {"name": "shapes"},
            "image_size": 512,
            "num_classes": None,
            "class_names": None,
            "category_ids": None,
            "min_visibility": 0.3,
        },
        "detection": {"num_samples": 8, "sample_score_thresh": 0.3},
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self._datasets: dict[str, Dataset] = {}
        self._results: dict[int, list[dict[str, Any]]] = {}
        self.last_stats: dict[str, float] = {}
        self.last_per_class: dict[str, float | None] = {}

    # -- config ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check classes, image size, min_visibility and the sample options, then the component specs."""
        data, opts = self.cfg["data"], self.cfg["detection"]
        n, names = data["num_classes"], data["class_names"]
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(
                f"data.num_classes must be a positive integer (object classes, no background), got {n!r}."
            )
        if names is not None and (not isinstance(names, list) or (n is not None and len(names) != n)):
            raise ConfigError(f"data.class_names must be a list of data.num_classes={n} names, got {names!r}.")
        ids = data["category_ids"]
        if ids is not None and (not isinstance(ids, list) or len(set(ids)) != len(ids) or (n and len(ids) != n)):
            raise ConfigError(f"data.category_ids must be a list of {n} distinct ids (label i -> ids[i]), got {ids!r}.")
        size = data["image_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 32:
            raise ConfigError(
                f"data.image_size must be an integer >= 32 (longest side fed to the model), got {size!r}."
            )
        if not 0 <= float(data["min_visibility"]) <= 1:
            raise ConfigError(f"data.min_visibility must lie in [0, 1], got {data['min_visibility']!r}.")
        if not isinstance(opts["num_samples"], int) or opts["num_samples"] < 0:
            raise ConfigError(f"detection.num_samples must be an integer >= 0, got {opts['num_samples']!r}.")
        if not 0 <= float(opts["sample_score_thresh"]) <= 1:
            raise ConfigError(f"detection.sample_score_thresh must lie in [0, 1], got {opts['sample_score_thresh']!r}.")
        super().validate()

    @property
    def class_names(self) -> list[str]:
        """Class names (config, else recorded from the data, else class_<i>)."""
        names = self.cfg["data"]["class_names"]
        n = self.cfg["data"]["num_classes"] or 0
        return list(names) if names else [f"class_{i}" for i in range(n)]

    @property
    def category_ids(self) -> list[int]:
        """Category id of each contiguous label (recorded from the data; 1..N by default)."""
        ids = self.cfg["data"]["category_ids"]
        return [int(i) for i in ids] if ids else list(range(1, len(self.class_names) + 1))

    def model_defaults(self) -> dict[str, Any]:
        """Model builders are offered num_classes (object classes, no background) and image_size."""
        data = self.cfg["data"]
        n = data["num_classes"] or (len(data["class_names"]) if data["class_names"] else None)
        return {"num_classes": n, "image_size": data["image_size"]}

    def dataset_defaults(self, split: str) -> dict[str, Any]:
        """Dataset builders are offered the split, its transform list, min_visibility, classes and image size."""
        data = self.cfg["data"]
        out = {
            "split": split,
            "transforms": data[f"{split}_transforms"],
            "min_visibility": data["min_visibility"],
            "class_names": data["class_names"],
            "image_size": data["image_size"],
        }
        if data["num_classes"] is not None:
            out["num_classes"] = data["num_classes"]
        return out

    # -- builders -------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        """Build a split once; classes the data defines are recorded in the config (saved with checkpoints)."""
        if split in self._datasets:
            return self._datasets[split]
        dataset = super().build_dataset(split)
        data = self.cfg["data"]
        names = list(getattr(dataset, "class_names", []) or [])
        if data["num_classes"] is not None and names and len(names) != data["num_classes"]:
            raise ConfigError(
                f"data.num_classes is {data['num_classes']} but data.{split} defines {len(names)} classes "
                f"({names[:10]}). Set data.num_classes: {len(names)} or null (null takes it from the data)."
            )
        if data["class_names"] is not None and names and list(data["class_names"]) != names:
            raise ConfigError(
                f"data.class_names {data['class_names']} differ from the classes of data.{split}: {names}."
            )
        if names:
            data["num_classes"], data["class_names"] = len(names), names
            data["category_ids"] = [int(c) for c in dataset.category_ids]  # so predictions carry the data's ids
        self._datasets[split] = dataset
        return dataset

    def build_model(self) -> nn.Module:
        """Build the detector; without data.num_classes the training data is read first to count classes."""
        data = self.cfg["data"]
        if data["num_classes"] is None and data["class_names"] is None and data.get("train") is not None:
            self.build_dataset("train")
        return super().build_model()

    def collate(self, samples: list[Any]) -> Any:
        """Lists of images and of target dicts."""
        return collate_detection(samples)

    # -- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The detector's own losses, summed as 'loss' and also reported one by one."""
        images, targets = batch
        losses = ctx.model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        total = sum(losses.values())
        return {"loss": total, **{f"loss_{k.removeprefix('loss_')}": v.detach() for k, v in losses.items()}}

    def reset_metrics(self) -> None:
        """Forget the detections of the previous validation."""
        self._results = {}

    def _val_dataset(self) -> Any:
        """The validation dataset (built by the trainer through build_dataset; built here if not)."""
        return self._datasets["val"] if "val" in self._datasets else self.build_dataset("val")

    def validation_step(self, batch: Any, ctx: StepContext) -> None:
        """Detect and keep COCO results per image id, boxes mapped back to the annotated image size."""
        images, targets = batch
        outputs = ctx.model(images)
        category_ids = self._val_dataset().category_ids
        for image, target, output in zip(images, targets, outputs, strict=True):
            image_id = int(target["image_id"])
            self._results[image_id] = to_coco_results(output, image_id, category_ids, original_scale(image, target))

    def compute_metrics(self) -> dict[str, float]:
        """pycocotools COCOeval on the detections of every rank (each image once) over the images evaluated."""
        merged: dict[int, list[dict[str, Any]]] = {}
        for part in all_gather_objects(self._results):
            merged.update(part)  # a distributed sampler may repeat images to even out ranks
        dataset = self._val_dataset()
        results = [r for image_id in sorted(merged) for r in merged[image_id]]
        stats, per_class, _ = coco_evaluate(dataset.coco, results, image_ids=merged.keys())
        names = dict(zip(dataset.category_ids, dataset.class_names, strict=True))
        self.last_stats = stats
        self.last_per_class = {names.get(c, str(c)): (None if math.isnan(ap) else ap) for c, ap in per_class.items()}
        return {f"val/{k}": v for k, v in stats.items()}

    def summary_extras(self) -> dict[str, Any]:
        """Per-class AP table and the 12 COCO stats of the last validation."""
        if not self.last_stats:
            return {}
        return {
            "per_class_AP": self.last_per_class,
            "coco_stats": {k: self.last_stats[k] for k in STAT_NAMES},
        }

    # -- outputs --------------------------------------------------------------------------------
    @torch.no_grad()
    def on_validation_end(self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int) -> None:
        """Write samples/val_epochNNN.png: ground truth in green, predictions above the sample threshold."""
        opts = self.cfg["detection"]
        count = min(int(opts["num_samples"]), len(dataset))
        if count == 0:
            return
        model = ctx.model
        was_training = model.training
        model.eval()
        samples = [dataset[index] for index in range(count)]
        with ctx.autocast() if ctx.autocast else contextlib.nullcontext():
            outputs = model([image.to(ctx.device) for image, _ in samples])
        drawn = []
        for (image, target), output in zip(samples, outputs, strict=True):
            keep = output["scores"] >= float(opts["sample_score_thresh"])
            pixels = (image.clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy()
            drawn.append(
                draw_boxes(
                    pixels,
                    output["boxes"][keep].float().cpu().numpy(),
                    output["labels"][keep].tolist(),
                    output["scores"][keep].float().tolist(),
                    getattr(dataset, "class_names", None) or self.class_names,
                    gt_boxes=target["boxes"].numpy(),
                )
            )
        model.train(was_training)
        out = Path(run_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        grid(drawn).save(out / f"val_epoch{epoch:03d}.png")

    def predict_files(
        self, model: nn.Module, inputs: list[Path], out_dir: Path, options: dict[str, Any]
    ) -> dict[str, Any]:
        """Detect objects in image files: COCO results JSON, an image list JSON and drawn images in out_dir."""
        from visionkit.tasks.detection.predict import predict_images

        return predict_images(self, model, inputs, Path(out_dir), options)
