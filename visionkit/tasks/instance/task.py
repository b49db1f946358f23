"""The instance segmentation task: detection with a mask per object, COCO box and mask AP on val."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from visionkit.data.images import as_rgb
from visionkit.engine.contracts import StepContext
from visionkit.errors import ConfigError
from visionkit.registry import MODELS, TASKS
from visionkit.tasks.detection.metrics import coco_rows
from visionkit.tasks.detection.predict import filter_detections
from visionkit.tasks.detection.task import DetectionTask, original_scale
from visionkit.tasks.instance.export import instance_export_spec
from visionkit.tasks.instance.masks import decode, encode
from visionkit.tasks.instance.visualize import draw_instances

MASK_THRESHOLD = 0.5  # a pixel belongs to an instance when its mask probability is at least this


def _defaults() -> dict[str, Any]:
    out = copy.deepcopy(DetectionTask.defaults)
    out["model"] = {"name": "yolo_seg"}
    out["data"]["train"] = {"name": "shapes_instance"}
    out["data"]["val"] = {"name": "shapes_instance"}
    out["metrics"] = ["coco_instance_map"]
    return out


def rle_texts(masks: torch.Tensor, size: tuple[int, int]) -> list[str]:
    """Mask probabilities [N, 1, h, w] (or [N, h, w]) as compressed RLE texts at `size` (height, width)."""
    probs = masks.detach().float().reshape(-1, 1, *masks.shape[-2:])
    if tuple(probs.shape[-2:]) != tuple(size) and len(probs):
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    binary = (probs[:, 0] >= MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
    return [encode(m)["counts"] for m in binary]


@TASKS.register("instance", aliases=["inst"])
class InstanceTask(DetectionTask):
    """Instance segmentation: boxes, labels and a mask per object; the model computes its losses; COCO box and
    mask AP (pycocotools bbox and segm) on val. Data, predict and the other services are detection's."""

    name = "instance"
    monitor = "val/mask_mAP"
    monitor_mode = "max"
    defaults: ClassVar[dict[str, Any]] = _defaults()

    def validate(self) -> None:
        """Detection's checks, and a model that predicts masks (detection's box-only models are found too, as this
        task derives from detection, but would train a whole epoch before validation found no masks)."""
        super().validate()
        name = self.cfg["model"]["name"]
        entry = MODELS.entry(name, [self.name, DetectionTask.name])
        if entry.tasks and self.name not in entry.tasks:
            raise ConfigError(
                f"model.name '{name}' is a detection model: it predicts boxes only. The instance task needs a model "
                f"that predicts masks: {', '.join(MODELS.names(self.name))}."
            )

    def training_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The model's losses (box and mask), summed as 'loss' and also reported one by one."""
        images, targets = batch
        given = [{"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"]} for t in targets]
        losses = ctx.model(images, given)
        total = sum(losses.values())
        return {"loss": total, **{f"loss_{k.removeprefix('loss_')}": v.detach() for k, v in losses.items()}}

    def validation_step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        """Detect and segment; per image its id, detection rows and RLE masks at the annotated image's size."""
        images, targets = batch
        outputs = ctx.model(images)
        category_ids = torch.as_tensor(self._val_dataset().category_ids, dtype=torch.long)
        rows, masks = [], []
        for image, target, output in zip(images, targets, outputs, strict=True):
            if "masks" not in output:
                raise ConfigError(
                    f"The instance task needs a model that predicts masks (maskrcnn); model.name "
                    f"'{self.cfg['model']['name']}' returns only {sorted(output)}."
                )
            rows.append(coco_rows(output, int(target["image_id"]), category_ids, original_scale(image, target)))
            height, width = (int(v) for v in target["orig_size"])
            masks.append(rle_texts(output["masks"], (height, width)))
        return {"image_ids": [int(t["image_id"]) for t in targets], "detections": rows, "masks": masks}

    # -- prediction: detection's, with each detection's mask as RLE at the original image's size ---------------
    def predict_batch(self, model: Any, inputs: list[Any], options: dict[str, Any]) -> list[dict[str, Any]]:
        """Detection's boxes, scores and labels, plus `masks`: one COCO RLE per detection, original pixels."""
        outputs = filter_detections(self.detect(model, inputs), options, self.facts.names)
        found = self.found_boxes(inputs, outputs)
        for record, output, (_, (height, width)) in zip(found, outputs, inputs, strict=True):
            texts = rle_texts(output["masks"], (height, width))
            record["masks"] = [{"size": [height, width], "counts": t} for t in texts]
        return found

    def postprocess(self, output: dict[str, Any], image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """Detection's record, each detection with its `segmentation` (COCO RLE) and `area` in pixels."""
        record = super().postprocess(output, image, options)
        keep = (output["scores"] >= float(options["score_threshold"])).tolist()
        shown = [m for m, k in zip(output["masks"], keep, strict=True) if k]
        for detection, rle in zip(record["detections"], shown, strict=True):
            detection["segmentation"] = rle
            detection["area"] = int(mask_utils.area({**rle, "counts": rle["counts"].encode()}))
        found = self._found[-1]  # every detection, for results.json
        self._found[-1] = [(*d, m) for d, m in zip(found, output["masks"], strict=True)]
        return record

    def draw(self, image: np.ndarray, output: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """The image with each shown detection's mask tinted in its own colour, box, class and score on top."""
        if not options["draw"]:
            return {}
        keep = (output["scores"] >= float(options["score_threshold"])).tolist()
        height, width = image.shape[:2]
        masks = [decode(m, height, width) for m, k in zip(output["masks"], keep, strict=True) if k]
        shown = self._shown(output, options)
        boxes = [[x, y, x + w, y + h] for _, _, (x, y, w, h) in shown]
        labels, scores = [s[0] for s in shown], [s[1] for s in shown]
        side = int(options.get("min_side") or 0)
        picture = draw_instances(as_rgb(image), masks, boxes, labels, scores, self.facts.names, min_side=side)
        return {"images": picture}

    def sample_picture(
        self, pixels: np.ndarray, output: dict[str, Any], keep: torch.Tensor, target: dict[str, Any]
    ) -> Any:
        """A validation sample with the kept predictions' masks tinted, ground-truth boxes in green."""
        masks = (output["masks"][keep].float().reshape(-1, *pixels.shape[:2]) >= MASK_THRESHOLD).cpu().numpy()
        return draw_instances(
            pixels,
            list(masks),
            output["boxes"][keep].float().cpu().numpy(),
            output["labels"][keep].tolist(),
            output["scores"][keep].float().tolist(),
            self.facts.names,
            gt_boxes=target["boxes"].numpy(),
        )

    def export_spec(self, model: Any, options: Any) -> Any:
        """Detection's one-image signature with each detection's mask probabilities as a fourth output."""
        return instance_export_spec(self, model, options)
