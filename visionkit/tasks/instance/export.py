"""Instance export: detection's signature (one image in, final boxes, scores, labels out) plus each detection's
mask probabilities [N, 1, H, W] in the input's pixels; the parity check adds a mask IoU row per matched pair."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from visionkit.engine.export_spec import CheckRow, ExportOptions, ExportSpec, TensorInfo
from visionkit.tasks.detection.export import (
    SingleImageDetector,
    as_detections,
    compare_detections,
    detection_export_spec,
    match_detections,
)

MIN_MASK_IOU = 0.99  # per matched detection, masks thresholded at 0.5


class SingleImageSegmenter(SingleImageDetector):
    """`image [1, 3, H, W]` -> (boxes, scores, labels, masks [N, 1, H, W] probabilities in 0..1)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        """The model's eval-mode output, masks included, for the one image of the batch."""
        out = self.detect(image)
        return out["boxes"].float(), out["scores"].float(), out["labels"].long(), out["masks"].float()


def instance_export_spec(task: Any, model: nn.Module, options: ExportOptions) -> ExportSpec:
    """Detection's export signature with a `masks` output, checked by mask IoU as well."""
    spec = detection_export_spec(task, model, options)
    masks = TensorInfo("masks", ["detections", 1, "height", "width"], "float32", "mask probability per pixel")
    cuts = {k: spec.notes.get(k) for k in ("score_thresh", "nms_thresh")}
    compare = partial(compare_instances, **cuts, max_detections=spec.notes.get("detections_per_img"))
    notes = {**spec.notes, "masks": "probabilities at the input image's pixels; a pixel is in the object at >= 0.5"}
    return dataclasses.replace(
        spec, module=SingleImageSegmenter(model).eval(), outputs=[*spec.outputs, masks], compare=compare, notes=notes
    )


def compare_instances(
    reference: Sequence[Any], exported: Sequence[Any], names: Sequence[str], **cuts: Any
) -> list[CheckRow]:
    """Detection's rows, and `masks`: 1 - the lowest IoU of a matched pair's masks (at 0.5), at most 0.01."""
    rows = compare_detections(reference, exported, names, **cuts)
    ref_masks, got_masks = (
        torch.as_tensor(dict(zip(names, side, strict=True))["masks"]) for side in (reference, exported)
    )
    ref_masks, got_masks = ref_masks.reshape(len(ref_masks), -1), got_masks.reshape(len(got_masks), -1)
    pairs = match_detections(as_detections(reference, names), as_detections(exported, names))
    worst, where = 0.0, "no matched detections"
    for i, j in pairs:
        a, b = ref_masks[i] >= 0.5, got_masks[j] >= 0.5
        union = int((a | b).sum())
        iou = 1.0 if union == 0 else int((a & b).sum()) / union
        if 1.0 - iou >= worst:
            worst, where = 1.0 - iou, f"worst: detection {i}, mask IoU {iou:.4f} over {union} pixels"
    ok = worst <= 1.0 - MIN_MASK_IOU and all(r.passed for r in rows if r.output == "boxes")
    return [*rows, CheckRow("masks", worst, 1.0 - MIN_MASK_IOU, ok, where)]
