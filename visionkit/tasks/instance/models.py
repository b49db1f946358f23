"""Mask R-CNN (torchvision) behind visionkit's detector interface, sized for a CPU by its config."""

from __future__ import annotations

from typing import Any

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from visionkit.errors import ConfigError
from visionkit.registry import MODELS
from visionkit.tasks.detection.backbones import build_fpn_backbone, fpn_strides
from visionkit.tasks.detection.models import Detector, _anchor_sizes, _check_common, _load_detector_weights


@MODELS.register("maskrcnn", task="instance", aliases=["mask_rcnn"])
def maskrcnn(
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
    mask_width: int = 256,
    mask_convs: int = 4,
    mask_pool: int = 14,
    rpn_pre_nms_top_n: int = 1000,
    rpn_post_nms_top_n: int = 1000,
    box_batch_size_per_image: int = 512,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> Detector:
    """Mask R-CNN with an FPN over the named backbone: Faster R-CNN's boxes plus a `mask_convs`-deep mask head
    (`mask_width` channels on `mask_pool`-cell RoIs; masks come out at twice that) per detection."""
    classes = _check_common(num_classes, image_size)
    for key, value in (("mask_width", mask_width), ("mask_convs", mask_convs), ("mask_pool", mask_pool)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.{key} is {value!r}; give a positive integer.")
    body = build_fpn_backbone(
        backbone, list(strides), fpn_channels, "pool", backbone_weights, norm, frozen_stages, pretrained
    )
    levels = fpn_strides(list(strides), "pool")
    sizes = _anchor_sizes(anchor_sizes, levels, lambda s: (8 * s,))
    anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    names = [str(i) for i in range(len(strides))]
    net = MaskRCNN(
        body,
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(fpn_channels * 49, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, classes + 1),
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=mask_pool, sampling_ratio=2),
        mask_head=MaskRCNNHeads(fpn_channels, [mask_width] * mask_convs, 1),
        mask_predictor=MaskRCNNPredictor(mask_width, mask_width, classes + 1),
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
