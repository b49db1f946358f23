"""The YOLO detector family: a CSP backbone with SPPF, a PAN-FPN neck over P3-P5 and a decoupled anchor-free head.

Sizes scale one layout by depth and width multipliers (`n`: 0.33/0.25, `s`: 0.33/0.50). Each CSP stage splits
its input, runs bottlenecks on one half and concatenates every intermediate output (CSPNet, arXiv 1911.11929);
SPPF pools the deepest features at growing receptive fields with three chained 5x5 max-pools. The neck merges
the levels top-down and then bottom-up. The head predicts, at every cell centre of P3-P5, class logits and each
box side's distance as a distribution (visionkit/tasks/detection/yolo_loss.py has the coding and the losses).

Images of any size are letterboxed to `image_size` squares (aspect ratio kept, padded with grey 114) inside the
model; detections are mapped back to each input's pixels, so the model keeps visionkit's detector interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import batched_nms

from visionkit.errors import ConfigError
from visionkit.registry import MODELS
from visionkit.tasks.detection.backbones import multiscale_body
from visionkit.tasks.detection.yolo_loss import anchor_points, decode, yolo_losses

SIZES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 768)}  # depth, width, max channels
PAD = 114 / 255


def conv(c_in: int, c_out: int, k: int = 1, s: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + SiLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03), nn.SiLU()
    )


class Bottleneck(nn.Module):
    """Two 3x3 convs, with a residual connection when asked."""

    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(c, c, 3), conv(c, c, 3))
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        return x + self.body(x) if self.shortcut else self.body(x)


class CSPStage(nn.Module):
    """Split in two, `n` bottlenecks on the second half, every intermediate output concatenated, then fused."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        half = c_out // 2
        self.split = conv(c_in, 2 * half)
        self.blocks = nn.ModuleList(Bottleneck(half, shortcut) for _ in range(n))
        self.fuse = conv((2 + n) * half, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output."""
        parts = list(self.split(x).chunk(2, 1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.fuse(torch.cat(parts, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools concatenated with their input."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.reduce, self.fuse = conv(c_in, c_in // 2), conv(c_in // 2 * 4, c_out)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features."""
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.fuse(torch.cat([x, p1, p2, self.pool(p2)], 1))


class Backbone(nn.Module):
    """Stem and four stride-2 stages with CSP blocks; returns P3, P4 and P5 (strides 8, 16, 32)."""

    def __init__(self, in_chans: int, widths: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.stem = conv(in_chans, c1, 3, 2)
        self.stage2 = nn.Sequential(conv(c1, c2, 3, 2), CSPStage(c2, c2, depths[0]))
        self.stage3 = nn.Sequential(conv(c2, c3, 3, 2), CSPStage(c3, c3, depths[1]))
        self.stage4 = nn.Sequential(conv(c3, c4, 3, 2), CSPStage(c4, c4, depths[2]))
        self.stage5 = nn.Sequential(conv(c4, c5, 3, 2), CSPStage(c5, c5, depths[3]), SPPF(c5, c5))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[P3, P4, P5]."""
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        return [p3, p4, self.stage5(p4)]


class ForeignBackbone(nn.Module):
    """A named trunk (`timm/<name>`, torchvision or visionkit's tiny CNNs) at strides 8, 16, 32, with SPPF on P5.

    Its input is normalised with ImageNet statistics, as such trunks (and their pretrained weights) expect.
    """

    def __init__(self, name: str, pretrained: bool, weights: str | None, norm: str | None) -> None:
        super().__init__()
        trunk, return_layers, channels, kind = multiscale_body(name, (8, 16, 32), weights, norm, 0, pretrained)
        self.body = trunk if kind == "timm" else IntermediateLayerGetter(trunk, return_layers)
        self.sppf = SPPF(channels[-1], channels[-1])
        self.channels = list(channels)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[P3, P4, P5]."""
        p3, p4, p5 = self.body((x - self.mean) / self.std).values()
        return [p3, p4, self.sppf(p5)]


class PANNeck(nn.Module):
    """Top-down then bottom-up merging of P3-P5 (PANet, arXiv 1803.01534)."""

    def __init__(self, widths: Sequence[int], depth: int) -> None:
        super().__init__()
        c3, c4, c5 = widths
        self.top4 = CSPStage(c5 + c4, c4, depth, shortcut=False)
        self.top3 = CSPStage(c4 + c3, c3, depth, shortcut=False)
        self.down3, self.bottom4 = conv(c3, c3, 3, 2), CSPStage(c3 + c4, c4, depth, shortcut=False)
        self.down4, self.bottom5 = conv(c4, c4, 3, 2), CSPStage(c4 + c5, c5, depth, shortcut=False)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Merged [P3, P4, P5]."""
        p3, p4, p5 = features
        n4 = self.top4(torch.cat([F.interpolate(p5, size=p4.shape[-2:], mode="nearest"), p4], 1))
        o3 = self.top3(torch.cat([F.interpolate(n4, size=p3.shape[-2:], mode="nearest"), p3], 1))
        o4 = self.bottom4(torch.cat([self.down3(o3), n4], 1))
        return [o3, o4, self.bottom5(torch.cat([self.down4(o4), p5], 1))]


class DecoupledHead(nn.Module):
    """Per level, a box branch (4 x reg_max distribution logits) and a class branch, each two 3x3 convs deep."""

    def __init__(self, widths: Sequence[int], num_classes: int, reg_max: int, strides: Sequence[int]) -> None:
        super().__init__()
        box_width = max(16, widths[0] // 4, 4 * reg_max)
        cls_width = max(widths[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(conv(c, box_width, 3), conv(box_width, box_width, 3), nn.Conv2d(box_width, 4 * reg_max, 1))
            for c in widths
        )
        self.cls = nn.ModuleList(
            nn.Sequential(conv(c, cls_width, 3), conv(cls_width, cls_width, 3), nn.Conv2d(cls_width, num_classes, 1))
            for c in widths
        )
        for box, cls, stride in zip(self.box, self.cls, strides, strict=True):  # priors: few objects per cell
            nn.init.constant_(box[-1].bias, 1.0)
            nn.init.constant_(cls[-1].bias, math.log(5 / num_classes / (640 / stride) ** 2))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [B, A, C], box logits [B, A, 4 * reg_max]) over every level's cells."""
        cls = [head(f).flatten(2) for head, f in zip(self.cls, features, strict=True)]
        box = [head(f).flatten(2) for head, f in zip(self.box, features, strict=True)]
        return torch.cat(cls, 2).transpose(1, 2), torch.cat(box, 2).transpose(1, 2)


class YOLODetector(nn.Module):
    """The YOLO detector behind visionkit's detector interface (labels 0..C-1; boxes in input pixels).

    Train mode: `model(images, targets)` returns `loss_box`, `loss_cls`, `loss_dfl`. Eval mode: `model(images)`
    returns one dict per image with `boxes` (xyxy), `scores` and `labels`, after per-class NMS.
    """

    strides = (8, 16, 32)

    def __init__(
        self, num_classes: int, in_chans: int = 3, size: str = "n", image_size: int = 640, reg_max: int = 16,
        topk: int = 10, alpha: float = 0.5, beta: float = 6.0, box_gain: float = 7.5, cls_gain: float = 0.5,
        dfl_gain: float = 1.5, score_thresh: float = 0.001, nms_thresh: float = 0.7, detections_per_img: int = 300,
        backbone: str | None = None, pretrained: bool = False, backbone_weights: str | None = None,
        norm: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        depth, width, top = SIZES[size]
        widths = [min(int(c * width), top) for c in (64, 128, 256, 512, 1024)]
        depths = [max(round(n * depth), 1) for n in (3, 6, 6, 3)]
        self.num_classes, self.image_size, self.reg_max = num_classes, image_size, reg_max
        if backbone:
            self.backbone: nn.Module = ForeignBackbone(backbone, pretrained, backbone_weights, norm)
            widths = [0, 0, *self.backbone.channels]
        else:
            self.backbone = Backbone(in_chans, widths, depths)
        self.level_widths = list(widths[2:])  # P3-P5 channels, for heads added on top (a mask head)
        self.neck = PANNeck(widths[2:], depths[0])
        self.head = DecoupledHead(widths[2:], num_classes, reg_max, self.strides)
        self.assigner = {"topk": topk, "alpha": alpha, "beta": beta}
        self.gains = {"box": box_gain, "cls": cls_gain, "dfl": dfl_gain}
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class logits, box logits, anchor points, point strides) of a letterboxed batch [B, C, S, S]."""
        features = self.neck(self.backbone(x))
        cls_logits, box_logits = self.head(features)
        points, strides = anchor_points([f.shape[-2:] for f in features], list(self.strides), x.device)
        return cls_logits, box_logits, points, strides

    def input_window(self, height: int, width: int) -> tuple[float, float, float, float]:
        """Where an image of this size lies in the letterboxed square: (top, left, bottom, right) fractions."""
        scale = self.image_size / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (self.image_size - h) // 2, (self.image_size - w) // 2
        return top / self.image_size, left / self.image_size, (top + h) / self.image_size, (left + w) / self.image_size

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None) -> Any:
        """Losses (train mode, targets required) or detections (eval mode)."""
        batch, scales, offsets = letterbox_batch(list(images), self.image_size)
        cls_logits, box_logits, points, strides = self.raw(batch)
        if self.training:
            if targets is None:
                raise ValueError("YOLODetector in train mode needs targets; call model.eval() for predictions.")
            boxed = [
                {"boxes": t["boxes"] * scale + offset.repeat(2), "labels": t["labels"]}
                for t, scale, offset in zip(targets, scales, offsets, strict=True)
            ]
            return yolo_losses(cls_logits, box_logits, points, strides, boxed, self.reg_max, self.gains, self.assigner)
        boxes = decode(box_logits, points, strides, self.reg_max)
        found = []
        for i, image in enumerate(images):
            kept = select(
                cls_logits[i].sigmoid(), boxes[i], self.score_thresh, self.nms_thresh, self.detections_per_img
            )
            kept["boxes"] = unletterbox(kept["boxes"], scales[i], offsets[i], torch._shape_as_tensor(image)[-2:])
            found.append(kept)
        return found


def select(
    scores: torch.Tensor, boxes: torch.Tensor, threshold: float, iou: float, limit: int, points: list | None = None
) -> dict[str, torch.Tensor]:
    """Multi-label detections of one image: every (point, class) over `threshold`, per-class NMS, the best `limit`.
    A list given as `points` receives the anchor index of each detection (a mask head reads its coefficients)."""
    point, label = (scores > threshold).nonzero(as_tuple=True)
    chosen_scores, chosen_boxes = scores[point, label], boxes[point]
    keep = batched_nms(chosen_boxes.float(), chosen_scores.float(), label, iou)[:limit]
    if points is not None:
        points.append(point[keep])
    return {"boxes": chosen_boxes[keep], "scores": chosen_scores[keep], "labels": label[keep]}


def letterbox_batch(
    images: list[torch.Tensor], size: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Each CHW image scaled so its longer side is `size` (aspect ratio kept), centred on a grey square.

    Sizes are computed with tensors (float64, as Python would), so a traced export keeps height and width dynamic.
    """
    out, scales, offsets = [], [], []
    for image in images:
        if not torch.jit.is_tracing() and tuple(image.shape[-2:]) == (size, size):  # already square: as is
            out.append(image[None])
            scales.append(torch.ones((), device=image.device))
            offsets.append(torch.zeros(2, device=image.device))
            continue
        sides = torch._shape_as_tensor(image)[-2:].to(torch.float64)
        scale = size / sides.max()
        new = (sides * scale).round().clamp(min=1).long()
        resized = F.interpolate(image[None], size=[new[0], new[1]], mode="bilinear", align_corners=False)
        pad = size - new
        top, left = pad[0] // 2, pad[1] // 2
        out.append(F.pad(resized, [left, pad[1] - left, top, pad[0] - top], value=PAD))
        scales.append(scale.to(image.device, torch.float32))
        offsets.append(torch.stack([left, top]).to(image.device, torch.float32))
    return torch.cat(out), scales, offsets


def unletterbox(
    boxes: torch.Tensor, scale: torch.Tensor | float, offset: torch.Tensor, shape: Sequence[Any]
) -> torch.Tensor:
    """Boxes from the letterboxed square back to the input image's pixels, clipped to it."""
    mapped = (boxes - offset.repeat(2)) / scale
    limit = torch.stack([torch.as_tensor(shape[1]), torch.as_tensor(shape[0])]).to(mapped).repeat(2)
    return torch.minimum(mapped.clamp(min=0), limit)


def check_options(
    in_chans: int, size: str, image_size: int, reg_max: int, backbone: str | None, pretrained: bool,
    backbone_weights: str | None, norm: str | None,
) -> None:  # fmt: skip
    """The YOLO builders' option checks: a ConfigError names the key and what it accepts."""
    if size not in SIZES:
        raise ConfigError(f"model.size is {size!r}; accepted: {', '.join(SIZES)}.")
    if backbone is None and (pretrained or backbone_weights or norm):
        raise ConfigError(
            "model.pretrained, model.backbone_weights and model.norm apply to a named model.backbone (e.g. "
            "timm/cspnext_tiny); the YOLO detector's own CSP trunk trains from scratch with batch norm."
        )
    if backbone is not None and in_chans != 3:
        raise ConfigError(f"model.backbone {backbone!r} takes RGB images; the data has {in_chans} channel(s).")
    if not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise ConfigError(f"data.image_size is {image_size!r}; the YOLO detector needs a multiple of 32 (>= 32).")
    if not isinstance(reg_max, int) or reg_max < 1:
        raise ConfigError(f"model.reg_max is {reg_max!r}; give the number of distance bins (16 is usual, 1: plain).")


@MODELS.register("yolo", task="detection")
def yolo(
    num_classes: int,
    in_chans: int = 3,
    size: str = "n",
    image_size: int = 640,
    reg_max: int = 16,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    box_gain: float = 7.5,
    cls_gain: float = 0.5,
    dfl_gain: float = 1.5,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.7,
    detections_per_img: int = 300,
    backbone: str | None = None,
    pretrained: bool = False,
    backbone_weights: str | None = None,
    norm: str | None = None,
) -> YOLODetector:
    """An anchor-free YOLO detector (`size` n or s; its own CSP trunk or `backbone: timm/<name>`), letterboxed."""
    check_options(in_chans, size, image_size, reg_max, backbone, pretrained, backbone_weights, norm)
    return YOLODetector(
        num_classes, in_chans, size, image_size, reg_max, topk, alpha, beta, box_gain, cls_gain, dfl_gain,
        score_thresh, nms_thresh, detections_per_img, backbone, pretrained, backbone_weights, norm,
    )  # fmt: skip
