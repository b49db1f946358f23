"""Detection models: torchvision Faster R-CNN, RetinaNet, FCOS and SSDlite with backbones chosen by name."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import Conv2dNormActivation

from visionkit.engine.weights import announce, carry_reports, load_matching, loading_enabled, read_state_file
from visionkit.errors import ConfigError, DataError, VisionkitWarning
from visionkit.registry import MODELS
from visionkit.tasks.detection.backbones import TimmFeatures, build_fpn_backbone, fpn_strides, multiscale_body

TASK = "detection"


class Detector(nn.Module):
    """A torchvision detector behind one interface: labels 0..C-1 in and out.

    Train mode: `model(images, targets)` returns the detector's dict of losses. Eval mode:
    `model(images)` returns one dict per image with `boxes` (xyxy, pixels of the input image),
    `scores` and `labels`.
    """

    def __init__(self, net: nn.Module, num_classes: int, label_offset: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.label_offset = label_offset  # 1 where the torchvision model reserves label 0 for background

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None) -> Any:
        """Losses (train mode, targets required) or detections (eval mode)."""
        images = list(images)
        if self.training:
            if targets is None:
                raise ValueError("Detector in train mode needs targets; call model.eval() for predictions.")
            shifted = [  # instance masks ride along for the models that learn them (Mask R-CNN)
                {**{k: t[k] for k in ("boxes", "masks") if k in t}, "labels": t["labels"] + self.label_offset}
                for t in targets
            ]
            return self.net(images, shifted)
        out = self.net(images)
        if self.label_offset:
            out = [{**o, "labels": o["labels"] - self.label_offset} for o in out]
        return out


def _check_common(num_classes: int | None, image_size: int) -> int:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"data.num_classes is {num_classes!r}; set it (or data.class_names) to the number of object classes."
        )
    if not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"data.image_size is {image_size!r}; give the longest image side in pixels (>= 32).")
    return num_classes


def _anchor_sizes(anchor_sizes: Sequence[Any] | None, strides: list[int], default: Any) -> tuple[tuple[int, ...], ...]:
    """One tuple of sizes per feature level: from the config, else `default(stride)`."""
    if anchor_sizes is None:
        return tuple(tuple(default(s)) for s in strides)
    sizes = tuple(tuple(a) if isinstance(a, (list, tuple)) else (a,) for a in anchor_sizes)
    if len(sizes) != len(strides):
        raise ConfigError(
            f"model.anchor_sizes has {len(sizes)} entries but the model has {len(strides)} feature levels "
            f"(strides {strides}); give one size (or list of sizes) per level."
        )
    return sizes


def _load_detector_weights(net: nn.Module, weights: str) -> None:
    """Load a local detector state dict (torchvision file or visionkit checkpoint), skipping mismatched heads."""
    if not loading_enabled():
        return  # a checkpoint's state dict follows
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"model.weights file '{path}' does not exist. Give a local .pth file (nothing is downloaded).")
    state = read_state_file(path, "model.weights")  # unwraps a checkpoint's "model"; a bad file is a clear error
    state = {k.removeprefix("net."): v for k, v in state.items()}
    try:
        report = load_matching(net, state, "detector", str(path))
    except ConfigError:
        raise DataError(
            f"model.weights file '{path}' shares no tensor with this model; is it the same architecture?"
        ) from None
    skipped = report.missing  # resized or new tensors, left as initialised
    if skipped:
        warnings.warn(
            f"model.weights '{path}': {len(skipped)} tensors not loaded (new or resized, e.g. class heads): "
            f"{skipped[:4]}",
            VisionkitWarning,
            stacklevel=2,
        )
    announce(net, report)


@MODELS.register("fasterrcnn", task=TASK, aliases=["faster_rcnn"])
def fasterrcnn(
    num_classes: int | None = None,
    image_size: int = 800,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    weights: str | None = None,
    pretrained: bool = False,
    strides: list[int] = (4, 8, 16, 32),  # type: ignore[assignment]
    fpn_channels: int = 256,
    norm: str | None = None,
    frozen_stages: int = 0,
    anchor_sizes: list[Any] | None = None,
    aspect_ratios: list[float] = (0.5, 1.0, 2.0),  # type: ignore[assignment]
    representation_size: int = 1024,
    rpn_pre_nms_top_n: int = 1000,
    rpn_post_nms_top_n: int = 1000,
    box_batch_size_per_image: int = 512,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> Detector:
    """Faster R-CNN with an FPN over the named backbone; anchors default to 8x the level stride."""
    classes = _check_common(num_classes, image_size)
    body = build_fpn_backbone(
        backbone, list(strides), fpn_channels, "pool", backbone_weights, norm, frozen_stages, pretrained
    )
    levels = fpn_strides(list(strides), "pool")
    sizes = _anchor_sizes(anchor_sizes, levels, lambda s: (8 * s,))
    anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    names = [str(i) for i in range(len(strides))]
    roi_pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
    net = FasterRCNN(
        body,
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(fpn_channels * 49, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, classes + 1),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n * 2,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n * 2,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n,
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
    )
    if weights:
        _load_detector_weights(net, weights)
    return Detector(net, classes, label_offset=1)


@MODELS.register("retinanet", task=TASK)
def retinanet(
    num_classes: int | None = None,
    image_size: int = 800,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    weights: str | None = None,
    pretrained: bool = False,
    strides: list[int] = (8, 16, 32),  # type: ignore[assignment]
    fpn_channels: int = 256,
    norm: str | None = None,
    frozen_stages: int = 0,
    anchor_sizes: list[Any] | None = None,
    aspect_ratios: list[float] = (0.5, 1.0, 2.0),  # type: ignore[assignment]
    head_norm: bool = False,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> Detector:
    """RetinaNet (P3-P7 FPN); anchors default to 4x the level stride at three octave scales."""
    classes = _check_common(num_classes, image_size)
    body = build_fpn_backbone(
        backbone, list(strides), fpn_channels, "p6p7", backbone_weights, norm, frozen_stages, pretrained
    )
    levels = fpn_strides(list(strides), "p6p7")
    sizes = _anchor_sizes(anchor_sizes, levels, lambda s: tuple(round(4 * s * 2 ** (k / 3)) for k in range(3)))
    anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    head_norm_layer = partial(nn.GroupNorm, math.gcd(32, fpn_channels)) if head_norm else None
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], classes, norm_layer=head_norm_layer)
    net = RetinaNet(
        body,
        classes,
        min_size=image_size,
        max_size=image_size,
        anchor_generator=anchors,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    if weights:
        _load_detector_weights(net, weights)
    return Detector(net, classes, label_offset=0)


@MODELS.register("fcos", task=TASK)
def fcos(
    num_classes: int | None = None,
    image_size: int = 800,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    weights: str | None = None,
    pretrained: bool = False,
    strides: list[int] = (8, 16, 32),  # type: ignore[assignment]
    fpn_channels: int = 256,
    extra_levels: bool = True,
    norm: str | None = None,
    frozen_stages: int = 0,
    anchor_sizes: list[Any] | None = None,
    head_convs: int = 4,
    center_sampling_radius: float = 1.5,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
) -> Detector:
    """FCOS (anchor-free; its 'anchor' per level has the level stride as size and sets the size ranges)."""
    classes = _check_common(num_classes, image_size)
    if fpn_channels % 32 or fpn_channels < 64:
        # GroupNorm(32) in the heads needs whole groups, and more than one value per group on a 1x1 top level
        raise ConfigError(f"model.fpn_channels is {fpn_channels}; FCOS needs a multiple of 32 that is >= 64.")
    extra = "p6p7" if extra_levels else "none"
    body = build_fpn_backbone(
        backbone, list(strides), fpn_channels, extra, backbone_weights, norm, frozen_stages, pretrained
    )
    levels = fpn_strides(list(strides), extra)
    sizes = _anchor_sizes(anchor_sizes, levels, lambda s: (s,))
    anchors = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
    net = FCOS(
        body,
        classes,
        min_size=image_size,
        max_size=image_size,
        anchor_generator=anchors,
        head=FCOSHead(fpn_channels, 1, classes, num_convs=head_convs),
        center_sampling_radius=center_sampling_radius,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    if weights:
        _load_detector_weights(net, weights)
    return Detector(net, classes, label_offset=0)


def _ssd_extra(cin: int, cout: int, norm_layer: Any) -> nn.Sequential:
    """SSDlite extra level: 1x1 down-projection, 3x3 depthwise stride 2, 1x1 up-projection."""
    mid = max(cout // 2, 8)
    return nn.Sequential(
        Conv2dNormActivation(cin, mid, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, mid, 3, stride=2, groups=mid, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, cout, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
    )


class SSDFeatures(nn.Module):
    """Backbone levels plus SSDlite extra levels, as the ordered dict torchvision's SSD expects."""

    def __init__(self, body: nn.Module, last_channels: int, extra_channels: Sequence[int], norm_layer: Any) -> None:
        super().__init__()
        self.body = body
        chans = [last_channels, *extra_channels]
        self.extra = nn.ModuleList(_ssd_extra(a, b, norm_layer) for a, b in zip(chans[:-1], chans[1:], strict=True))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Feature maps from fine to coarse."""
        feats = list(self.body(x).values())
        x = feats[-1]
        for block in self.extra:
            x = block(x)
            feats.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


@MODELS.register("ssdlite", task=TASK)
def ssdlite(
    num_classes: int | None = None,
    image_size: int = 320,
    backbone: str = "mobilenet_v3_large",
    backbone_weights: str | None = None,
    weights: str | None = None,
    pretrained: bool = False,
    strides: list[int] = (16, 32),  # type: ignore[assignment]
    extra_channels: list[int] = (512, 256, 256, 128),  # type: ignore[assignment]
    norm: str | None = None,
    frozen_stages: int = 0,
    aspect_ratios: list[float] = (2.0, 3.0),  # type: ignore[assignment]
    min_ratio: float = 0.2,
    max_ratio: float = 0.95,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.55,
    detections_per_img: int = 100,
) -> Detector:
    """SSDlite: square input of image_size, backbone levels + depthwise extra levels, default boxes by ratio."""
    classes = _check_common(num_classes, image_size)
    trunk, return_layers, channels, _kind = multiscale_body(
        backbone, list(strides), backbone_weights, norm, frozen_stages, pretrained
    )
    body = (
        trunk
        if isinstance(trunk, TimmFeatures)
        else carry_reports(trunk, IntermediateLayerGetter(trunk, return_layers))
    )
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    features = SSDFeatures(body, channels[-1], list(extra_channels), norm_layer)
    out_channels = [*channels, *extra_channels]
    anchors = DefaultBoxGenerator([list(aspect_ratios)] * len(out_channels), min_ratio=min_ratio, max_ratio=max_ratio)
    head = SSDLiteHead(out_channels, anchors.num_anchors_per_location(), classes + 1, norm_layer)
    net = SSD(
        features,
        anchors,
        (image_size, image_size),
        classes + 1,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=max(300, detections_per_img),
    )
    if weights:
        _load_detector_weights(net, weights)
    return Detector(net, classes, label_offset=1)
