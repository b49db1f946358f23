"""The object detection task: torchvision detectors, COCO-style evaluation, sample drawings and file prediction."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import nn
from torch.utils.data import Dataset

from visionkit.data.facts import DataFacts, declared_facts, facts_kwargs, facts_of, resolve_facts
from visionkit.data.images import as_rgb
from visionkit.data.transforms import build_pipeline
from visionkit.engine.contracts import StepContext, Task
from visionkit.engine.precision import device_of
from visionkit.errors import ConfigError
from visionkit.registry import TASKS
from visionkit.tasks.detection.export import DetectionExportedModel, detection_export_spec
from visionkit.tasks.detection.metrics import coco_rows
from visionkit.tasks.detection.mosaic import MosaicDataset, MosaicOptions
from visionkit.tasks.detection.predict import OPTIONS, AnnotationIds, filter_detections, write_results
from visionkit.tasks.detection.report import plot_confusion, plot_curves
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
            "cache_images": False,
            "mosaic": {
                "p": 0.0,
                "close_epochs": 0,
                "scale": [0.5, 1.5],
                "translate": 0.1,
                "degrees": 0.0,
                "shear": 0.0,
                "mixup": 0.0,
                "min_visibility": 0.1,
            },
        },
        "metrics": ["coco_map"],
        "detection": {"num_samples": 8, "sample_score_thresh": 0.3},
    }
    predict_options: ClassVar[dict[str, Any]] = dict(OPTIONS)
    predict_stack = False  # detectors take lists of images of any size

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self._datasets: dict[str, Dataset] = {}
        self._annotations: dict[str, AnnotationIds] = {}
        self._found: list[list[tuple[int, float, list[float]]]] = []  # every detection of each predicted image

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
        MosaicOptions.from_config(data["mosaic"])
        if not isinstance(opts["num_samples"], int) or opts["num_samples"] < 0:
            raise ConfigError(f"detection.num_samples must be an integer >= 0, got {opts['num_samples']!r}.")
        if not 0 <= float(opts["sample_score_thresh"]) <= 1:
            raise ConfigError(f"detection.sample_score_thresh must lie in [0, 1], got {opts['sample_score_thresh']!r}.")
        super().validate()

    # -- data facts -----------------------------------------------------------------------------
    def data_facts(self, train: Dataset | None, val: Dataset | None) -> DataFacts:
        """Classes and category ids from the data (checked against data.num_classes / class_names), RGB input."""
        data = self.cfg["data"]
        declared, found = declared_facts(data), facts_of(train)
        if found.class_names:  # the data's own category ids, so predictions carry them
            declared = declared.replace(category_ids=None)
        facts = resolve_facts(declared, found, facts_of(val) if val is not None else None)
        ids = facts.category_ids or (list(range(1, facts.num_classes + 1)) if facts.num_classes else None)
        return facts.replace(category_ids=ids, channels=3, image_size=data["image_size"])

    def category_ids(self) -> list[int]:
        """Category id of each contiguous label (from the facts; 1..N when the data names none)."""
        return list(self.facts.category_ids or range(1, len(self.facts.names) + 1))

    def model_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """Model builders are offered the facts (num_classes: object classes, no background) and data.image_size."""
        return {**facts_kwargs(facts), "image_size": self.cfg["data"]["image_size"]}

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

    def metric_defaults(self, facts: DataFacts) -> dict[str, Any]:
        """Metric builders are offered the facts and `ground_truth`: the validation data's COCO object, lazily."""
        return {**facts_kwargs(facts), "ground_truth": self.ground_truth}

    def ground_truth(self) -> COCO:
        """The validation dataset's ground truth as a pycocotools COCO object."""
        return self._val_dataset().coco

    # -- builders -------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        """Build a split once (the metrics read the validation split's ground truth); with data.mosaic.p > 0
        the training split is wrapped in mosaic/mixup (any DetectionDataset: COCO, VOC, YOLO txt, shapes)."""
        if split not in self._datasets:
            dataset = super().build_dataset(split)
            if self.cfg["data"]["cache_images"] and callable(getattr(dataset, "cache_images", None)):
                dataset.cache_images(int(float(os.environ.get("VISIONKIT_IMAGE_CACHE_GB", "4")) * 2**30))
            opts = MosaicOptions.from_config(self.cfg["data"]["mosaic"])
            if split == "train" and opts.p > 0:
                if not callable(getattr(dataset, "load_image", None)) or not hasattr(dataset, "records"):
                    raise ConfigError(
                        f"data.mosaic needs a detection dataset with `records` and `load_image` (a visionkit "
                        f"DetectionDataset); the training set is a {type(dataset).__name__}. Set data.mosaic.p: 0."
                    )
                epochs = int(self.cfg["trainer"]["epochs"])
                dataset = MosaicDataset(dataset, int(self.cfg["data"]["image_size"]), opts, epochs)
            self._datasets[split] = dataset
        return self._datasets[split]

    def _val_dataset(self) -> Any:
        """The validation dataset (built by the core through build_dataset; built here if not)."""
        return self.build_dataset("val")

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

    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        """Detect; per image its id and COCO rows (data's category ids, boxes in the annotated image's pixels)."""
        images, targets = batch
        outputs = ctx.model(images)
        category_ids = torch.as_tensor(self._val_dataset().category_ids, dtype=torch.long)
        rows = [
            coco_rows(output, int(target["image_id"]), category_ids, original_scale(image, target))
            for image, target, output in zip(images, targets, outputs, strict=True)
        ]
        return {"image_ids": [int(t["image_id"]) for t in targets], "detections": rows}

    def batch_size(self, batch: Any) -> int:
        """Images in a batch (a list)."""
        return len(batch[0])

    # -- outputs --------------------------------------------------------------------------------
    @torch.no_grad()
    def on_validation_end(
        self, ctx: StepContext, dataset: Dataset, run_dir: Path, epoch: int, results: dict[str, Any]
    ) -> None:
        """Write PR_curve.png and F1_curve.png (IoU 0.5, per class), and samples/val_epochNNN.png: ground truth in
        green, predictions above the sample threshold."""
        for key, prefix in (("_pr_curves", ""), ("_mask_pr_curves", "mask_"), ("_box_pr_curves", "box_")):
            if results.get(key) and results[key]["classes"]:
                plot_curves(results[key], Path(run_dir), prefix)
                (Path(run_dir) / f"{prefix}pr_curves.json").write_text(json.dumps(results[key]))
        if isinstance(results.get("confusion_matrix"), dict):
            plot_confusion(results["confusion_matrix"], Path(run_dir) / "confusion_matrix.png")
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
            drawn.append(self.sample_picture(pixels, output, keep, target))
        model.train(was_training)
        out = Path(run_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        grid(drawn).save(out / f"val_epoch{epoch:03d}.png")

    def sample_picture(
        self, pixels: np.ndarray, output: dict[str, Any], keep: torch.Tensor, target: dict[str, Any]
    ) -> Any:
        """One validation sample drawn: ground truth in green, the kept predictions in class colours."""
        return draw_boxes(
            pixels,
            output["boxes"][keep].float().cpu().numpy(),
            output["labels"][keep].tolist(),
            output["scores"][keep].float().tolist(),
            self.facts.names,
            gt_boxes=target["boxes"].numpy(),
        )

    # -- prediction (the core Predictor walks, reads, batches and writes predictions.json) ------
    def _annotation_ids(self, options: dict[str, Any]) -> AnnotationIds | None:
        """The `ann_file` option's ids (read once per file; categories checked by name)."""
        ann = options.get("ann_file")
        if not ann:
            return None
        if str(ann) not in self._annotations:
            self._annotations[str(ann)] = AnnotationIds(str(ann), self.facts.names)
        return self._annotations[str(ann)]

    def _output_category_ids(self, options: dict[str, Any]) -> list[int]:
        ann = self._annotation_ids(options)
        return ann.category_ids if ann is not None else self.category_ids()

    def preprocess(self, image: np.ndarray, options: dict[str, Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """`data.val_transforms`, then /255 (no normalisation: the detector normalises); with the original size."""
        self._annotation_ids(options)  # a bad ann_file stops before any image is predicted
        if not hasattr(self, "_val_pipeline"):
            self._val_pipeline = build_pipeline(self.cfg["data"].get("val_transforms"), key="data.val_transforms")
        pixels = as_rgb(image)
        transformed = self._val_pipeline(image=pixels)["image"]
        tensor = torch.from_numpy(np.array(transformed)).permute(2, 0, 1)
        tensor = tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()
        return tensor, (pixels.shape[0], pixels.shape[1])

    def predict_batch(self, model: nn.Module, inputs: list[Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        """Detect on a list of any-size images (same-size ones together); boxes (x, y, w, h) in original pixels."""
        return self.found_boxes(inputs, filter_detections(self.detect(model, inputs), options, self.facts.names))

    def detect(self, model: nn.Module, inputs: list[Any]) -> list[dict[str, torch.Tensor]]:
        """The model's outputs for preprocessed inputs, in order: one call per input size (no padding)."""
        device = device_of(model)
        outputs: list[Any] = [None] * len(inputs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (tensor, _) in enumerate(inputs):
            by_shape.setdefault(tuple(tensor.shape), []).append(i)
        for group in by_shape.values():  # an image's result is its own
            for i, output in zip(group, model([inputs[i][0].to(device) for i in group]), strict=True):
                outputs[i] = output
        return outputs

    def found_boxes(self, inputs: list[Any], outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        """Per image: COCO boxes (x, y, w, h) in its original pixels, scores and labels, in the model's order."""
        labels = torch.arange(max(len(self.facts.names), 1))
        found = []
        for (tensor, (height, width)), output in zip(inputs, outputs, strict=True):
            scale = (width / tensor.shape[-1], height / tensor.shape[-2])
            rows = coco_rows({k: v.cpu() for k, v in output.items() if k != "masks"}, 0, labels, scale)
            found.append({"bbox": rows[:, 1:5], "scores": rows[:, 5], "labels": rows[:, 6].long()})
        return found

    def _shown(self, output: dict[str, Any], options: dict[str, Any]) -> list[tuple[int, float, list[float]]]:
        """(label, score, bbox) of the detections at or above the score threshold."""
        keep = output["scores"] >= float(options["score_threshold"])
        return list(
            zip(output["labels"][keep].tolist(), output["scores"][keep].tolist(), output["bbox"][keep].tolist())
        )

    def postprocess(self, output: dict[str, Any], image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """One image's record: its size and the detections above score_threshold (class, category id, score, box)."""
        names, category_ids = self.facts.names, self._output_category_ids(options)
        everything = zip(output["labels"].tolist(), output["scores"].tolist(), output["bbox"].tolist())
        self._found.append(list(everything))  # results.json holds every detection
        detections = [
            {
                "class": names[label],
                "category_id": int(category_ids[label]),
                "score": round(score, 4),
                "bbox": [round(v, 2) for v in bbox],
            }
            for label, score, bbox in self._shown(output, options)
        ]
        return {"width": int(image.shape[1]), "height": int(image.shape[0]), "detections": detections}

    def draw(self, image: np.ndarray, output: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """The image with the detections above score_threshold, when the `draw` option is on."""
        if not options["draw"]:
            return {}
        shown = self._shown(output, options)
        boxes = [[x, y, x + w, y + h] for _, _, (x, y, w, h) in shown]
        labels, scores = [s[0] for s in shown], [s[1] for s in shown]
        side = int(options.get("min_side") or 0)
        return {"images": draw_boxes(as_rgb(image), boxes, labels, scores, self.facts.names, min_side=side)}

    def describe(self, record: dict[str, Any]) -> str:
        """'2 circle, 1 square' (the shown detections by class, most first) or 'no detections'."""
        counts: dict[str, int] = {}
        for d in record.get("detections", []):
            counts[d["class"]] = counts.get(d["class"], 0) + 1
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{n} {name}" for name, n in ordered) or "no detections"

    def finish_predictions(self, records: list[dict[str, Any]], out_dir: Path, options: dict[str, Any]) -> dict:
        """results.json (every detection, COCO format) and images.json; image ids 1..N or from `ann_file`."""
        found, self._found = self._found[-len(records) :] if records else [], []
        ann = self._annotation_ids(options)
        inputs = [r["input"] for r in records]
        image_ids = ann.image_ids(inputs) if ann is not None else list(range(1, len(records) + 1))
        summary = write_results(
            records, found, image_ids, self._output_category_ids(options), self.facts.names, Path(out_dir)
        )
        return {**summary, "score_threshold": float(options["score_threshold"])}

    # -- export (visionkit/tasks/detection/export.py) -------------------------------------------
    def export_spec(self, model: nn.Module, options: Any) -> Any:
        """One [1, 3, H, W] image in 0..1 in; final boxes (xyxy, input pixels), scores and labels out."""
        return detection_export_spec(self, model, options)

    def exported_model(self, session: Any, sidecar: dict[str, Any]) -> Any:
        """The exported detector behind the eager Detector's interface (lists of images in, dicts out)."""
        return DetectionExportedModel(session, sidecar)
