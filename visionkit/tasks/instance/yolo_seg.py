"""A YOLO detector with prototype masks (YOLACT, arXiv 1904.02689): each detection's mask is its coefficients
times a set of image-wide prototypes, trained with BCE cropped to the object's box and normalised by its area.

The detector part is visionkit's `yolo` (letterbox, CSP trunk, PAN neck, task-aligned assignment, DFL); the
mask head adds a prototype net on the finest neck level and a coefficient branch per level. The mask loss uses
the anchors the assigner picked for the box losses, each against the mask of the object it was assigned.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionkit.errors import ConfigError, did_you_mean
from visionkit.registry import MODELS
from visionkit.tasks.detection.yolo_loss import Assignment, anchor_points, decode, yolo_losses
from visionkit.tasks.detection.yolo_net import (
    YOLODetector,
    check_options,
    conv,
    letterbox_batch,
    select,
    unletterbox,
)

MASK_STRIDES = (2, 4, 8)


class ProtoNet(nn.Module):
    """Prototypes from the stride-8 neck level, upsampled to `mask_stride` (4: twice as fine)."""

    def __init__(self, c_in: int, width: int, num_protos: int, mask_stride: int) -> None:
        super().__init__()
        up = 8 // mask_stride
        layers: list[nn.Module] = [conv(c_in, width, 3)]
        if up > 1:
            layers.append(nn.Upsample(scale_factor=up, mode="nearest"))
        layers += [conv(width, width, 3), nn.Conv2d(width, num_protos, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        """[B, num_protos, S / mask_stride, S / mask_stride]."""
        return self.net(p3)


def box_crop(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, height, width] True inside each box (xyxy in the grid's cells, cell centres tested)."""
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[None, :, None] + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)[None, None, :] + 0.5
    x1, y1, x2, y2 = (boxes[:, k, None, None] for k in range(4))
    return (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)


def mask_loss(
    coefs: torch.Tensor,
    protos: torch.Tensor,
    assigned: Sequence[Assignment],
    masks: Sequence[torch.Tensor],
    stride: int,
) -> torch.Tensor:
    """BCE of each positive anchor's mask against its object's (at the prototypes' resolution), inside the
    object's box, per object normalised by the box area; averaged over the positives of the batch."""
    total, count = coefs.sum() * 0.0, 0
    height, width = protos.shape[-2:]
    for i, found in enumerate(assigned):
        positive = found.positive.nonzero().squeeze(1)
        if not len(positive) or found.owner is None or not len(masks[i]):
            continue
        small = F.interpolate(masks[i][None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
        target = small[found.owner[positive]]
        logits = torch.einsum("np,phw->nhw", coefs[i, positive].float(), protos[i].float())
        boxes = found.boxes[positive] / stride
        crop = box_crop(boxes, height, width)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1.0)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        total = total + ((bce * crop).sum((1, 2)) / area).sum()
        count += len(positive)
    return total / max(count, 1)


def letterbox_masks(masks: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """Masks [G, H, W] of one image placed as the letterbox places the image: [G, size, size] float."""
    if tuple(masks.shape[-2:]) == (size, size):
        return masks.float()
    h, w = (max(1, round(float(v) * float(scale))) for v in masks.shape[-2:])
    resized = F.interpolate(masks[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
    left, top = (int(v) for v in offset.tolist())
    return F.pad(resized, [left, size - w - left, top, size - h - top])


class YOLOSegmenter(YOLODetector):
    """The YOLO detector with a prototype-mask head. Train: adds `loss_mask`. Eval: each detection also gets
    `masks` [N, 1, H, W], probabilities in the input image's pixels (zero outside its box)."""

    def __init__(self, num_classes: int, num_protos: int = 32, mask_stride: int = 4, mask_gain: float = 2.5, **kw: Any):
        super().__init__(num_classes, **kw)
        c3 = self.level_widths[0]
        self.mask_stride, self.mask_gain = mask_stride, mask_gain
        self.proto = ProtoNet(c3, max(c3, num_protos), num_protos, mask_stride)
        width = max(c3 // 4, num_protos)
        self.coef = nn.ModuleList(
            nn.Sequential(conv(c, width, 3), conv(width, width, 3), nn.Conv2d(width, num_protos, 1))
            for c in self.level_widths
        )

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None) -> Any:
        """Losses with `loss_mask` (train mode, targets with `masks`) or detections with `masks` (eval mode)."""
        batch, scales, offsets = letterbox_batch(list(images), self.image_size)
        features = self.neck(self.backbone(batch))
        cls_logits, box_logits = self.head(features)
        coefs = torch.cat([head(f).flatten(2) for head, f in zip(self.coef, features, strict=True)], 2).transpose(1, 2)
        protos = self.proto(features[0])
        points, strides = anchor_points([f.shape[-2:] for f in features], list(self.strides), batch.device)
        if self.training:
            if targets is None or any("masks" not in t for t in targets):
                raise ValueError("YOLOSegmenter in train mode needs targets with boxes, labels and masks.")
            boxed = [
                {"boxes": t["boxes"] * scale + offset.repeat(2), "labels": t["labels"]}
                for t, scale, offset in zip(targets, scales, offsets, strict=True)
            ]
            assigned: list[Assignment] = []
            losses = yolo_losses(
                cls_logits, box_logits, points, strides, boxed, self.reg_max, self.gains, self.assigner, assigned
            )
            masks = [letterbox_masks(t["masks"], s, o, self.image_size) for t, s, o in zip(targets, scales, offsets)]
            losses["loss_mask"] = mask_loss(coefs, protos, assigned, masks, self.mask_stride) * self.mask_gain
            return losses
        boxes = decode(box_logits, points, strides, self.reg_max)
        found = []
        for i, image in enumerate(images):
            chosen: list[torch.Tensor] = []
            scores = cls_logits[i].sigmoid()
            kept = select(scores, boxes[i], self.score_thresh, self.nms_thresh, self.detections_per_img, chosen)
            kept["masks"] = self._masks(coefs[i, chosen[0]], protos[i], kept["boxes"], scales[i], offsets[i], image)
            kept["boxes"] = unletterbox(kept["boxes"], scales[i], offsets[i], torch._shape_as_tensor(image)[-2:])
            found.append(kept)
        return found

    def _masks(
        self, coefs: torch.Tensor, protos: torch.Tensor, boxes: torch.Tensor, scale: torch.Tensor,
        offset: torch.Tensor, image: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Mask probabilities [N, 1, H, W] of one image's detections in its own pixels (boxes: letterbox pixels).

        Each pixel centre of the image is mapped through the letterbox onto the prototypes and sampled there
        (bilinear): one step, with sizes as tensors, so a traced export keeps the image size dynamic."""
        small = torch.sigmoid(coefs @ protos.flatten(1)).view(-1, *protos.shape[-2:])
        small = small * box_crop(boxes / self.mask_stride, *protos.shape[-2:])
        sides = torch._shape_as_tensor(image)[-2:].to(torch.float64)
        placed = (sides * (self.image_size / sides.max())).round().clamp(min=1)  # as letterbox_batch sizes it
        axes = []
        for k, o in ((1, 0), (0, 1)):  # x (width, left offset), then y (height, top offset)
            centres = torch.arange(sides[k].long(), device=image.device, dtype=torch.float64) + 0.5
            axes.append(2.0 * (centres * placed[k] / sides[k] + offset[o].double()) / self.image_size - 1.0)
        grid = torch.stack(torch.meshgrid(axes[1], axes[0], indexing="ij")[::-1], -1)[None].to(small.dtype)
        out = F.grid_sample(small[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0][:, None]


@MODELS.register("yolo_seg", task="instance")
def yolo_seg(
    num_classes: int,
    in_chans: int = 3,
    size: str = "n",
    image_size: int = 640,
    num_protos: int = 32,
    mask_stride: int = 4,
    mask_gain: float = 2.5,
    **options: Any,
) -> YOLOSegmenter:
    """The YOLO detector (any `yolo` option) with YOLACT prototype masks at `mask_stride` (2, 4 or 8 pixels)."""
    if mask_stride not in MASK_STRIDES:
        raise ConfigError(f"model.mask_stride is {mask_stride!r}; accepted: {', '.join(map(str, MASK_STRIDES))}.")
    if isinstance(num_protos, bool) or not isinstance(num_protos, int) or num_protos < 1:
        raise ConfigError(f"model.num_protos is {num_protos!r}; give a positive integer (32 is usual).")
    known = [p for p in inspect.signature(YOLODetector.__init__).parameters if p not in ("self", "num_classes")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        names = [*known, "num_protos", "mask_stride", "mask_gain"]
        raise ConfigError(
            f"model 'yolo_seg' has no option '{unknown[0]}'.{did_you_mean(unknown[0], names)} "
            f"Options: {', '.join(names)}."
        )
    trunk = {k: options.get(k) for k in ("backbone", "pretrained", "backbone_weights", "norm")}
    check_options(in_chans, size, image_size, int(options.get("reg_max", 16)), **trunk)  # type: ignore[arg-type]
    return YOLOSegmenter(
        num_classes, num_protos, mask_stride, mask_gain, in_chans=in_chans, size=size, image_size=image_size, **options
    )
