"""The four torchvision detector families behind one interface, backbones by name, anchors and weights from config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionkit.errors import ConfigError, DataError
from visionkit.registry import MODELS
from visionkit.tasks.detection.models import Detector

SMALL = {
    "fasterrcnn": {
        "strides": [8, 16, 32],
        "fpn_channels": 16,
        "representation_size": 32,
        "rpn_pre_nms_top_n": 50,
        "rpn_post_nms_top_n": 20,
        "box_batch_size_per_image": 32,
    },
    "retinanet": {"fpn_channels": 16},
    "fcos": {"fpn_channels": 64, "head_convs": 1},
    "ssdlite": {"extra_channels": [32, 32, 16, 16]},
}


def build(name: str, **kwargs):
    torch.manual_seed(0)
    return MODELS.build({"name": name, "backbone": "tiny", **SMALL[name], **kwargs}, num_classes=3, image_size=64)


def batch():
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 28.0], [20.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    return images, targets


def test_registered_for_the_task() -> None:
    assert {"fasterrcnn", "retinanet", "fcos", "ssdlite"} <= set(MODELS.names("detection"))
    assert MODELS.canonical("faster_rcnn") == "fasterrcnn"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_losses_in_train_mode_and_detections_in_eval_mode(name) -> None:
    model = build(name)
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    assert isinstance(losses, dict) and len(losses) >= 2
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, image in zip(out, images, strict=True):
        assert set(o) >= {"boxes", "scores", "labels"}
        if len(o["labels"]):
            assert 0 <= int(o["labels"].min()) and int(o["labels"].max()) < 3  # contiguous labels, no background
            assert float(o["boxes"][:, 2].max()) <= image.shape[-1] + 1e-3  # boxes in input-image pixels


class _Echo(nn.Module):
    """Stands in for a torchvision detector: returns the labels it was given / fixed detections."""

    def forward(self, images, targets=None):
        if self.training:
            return {"seen": torch.stack([t["labels"] for t in targets]).float().sum()}
        return [{"boxes": torch.zeros(2, 4), "scores": torch.ones(2), "labels": torch.tensor([1, 3])}]


def test_label_offset_for_models_with_a_background_class() -> None:
    model = Detector(_Echo(), num_classes=3, label_offset=1)
    model.train()
    assert model([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([2])}])["seen"] == 3
    model.eval()
    assert model([torch.rand(3, 8, 8)])[0]["labels"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(torch.rand(1, 3, 8, 8))
    fasterrcnn = build("fasterrcnn")
    assert fasterrcnn.net.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert build("fcos").net.head.classification_head.num_classes == 3  # sigmoid heads need no background


def test_input_size_and_anchors_come_from_config() -> None:
    model = build("fasterrcnn", anchor_sizes=[[12], [24], [48], [96]], aspect_ratios=[0.5, 1.0])
    assert model.net.transform.min_size == (64,) and model.net.transform.max_size == 64
    assert model.net.rpn.anchor_generator.sizes == ((12,), (24,), (48,), (96,))
    assert model.net.rpn.anchor_generator.num_anchors_per_location() == [2] * 4
    retina = build("retinanet", anchor_sizes=[8, 16, 32, 64, 128], aspect_ratios=[1.0])
    assert retina.net.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    fcos = build("fcos")
    assert fcos.net.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))  # level strides by default
    ssd = build("ssdlite", image_size=96, aspect_ratios=[2.0])
    assert ssd.net.transform.fixed_size == (96, 96) and ssd.net.anchor_generator.num_anchors_per_location()[0] == 4
    with pytest.raises(ConfigError, match="anchor_sizes has 2 entries but the model has 4 feature levels"):
        build("fasterrcnn", anchor_sizes=[16, 32])


def test_backbones_by_name() -> None:
    kw = {"num_classes": 2, "image_size": 64, "fpn_channels": 64, "head_convs": 1}
    torchvision_resnet = MODELS.build({"name": "fcos", "backbone": "resnet18"}, **kw)
    timm_model = MODELS.build({"name": "fcos", "backbone": "timm/mobilenetv3_small_050"}, **kw)
    assert type(torchvision_resnet.net.backbone.body.layer4).__name__ == "Sequential"
    assert type(timm_model.net.backbone.body.model).__module__.startswith("timm")
    ssd = MODELS.build(
        {"name": "ssdlite", "backbone": "mobilenet_v3_small", "extra_channels": [32, 32, 16, 16]},
        num_classes=2,
        image_size=64,
    )
    for model in (torchvision_resnet, timm_model, ssd):
        model.eval()
        with torch.no_grad():
            assert len(model([torch.rand(3, 64, 64)])) == 1
    with pytest.raises(ConfigError, match="Unknown backbone 'resnet19'.*resnet18"):
        MODELS.build({"name": "fcos", "backbone": "resnet19"}, **kw)
    with pytest.raises(ConfigError, match="Unknown timm model"):
        MODELS.build({"name": "fcos", "backbone": "timm/not_a_model"}, **kw)
    with pytest.raises(ConfigError, match="no feature map with stride \\[64\\]"):
        MODELS.build({"name": "fcos", "backbone": "tiny", "strides": [16, 32, 64]}, **kw)


def test_weights_only_from_local_files(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build("fcos", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(DataError, match="does not exist"):
        build("fcos", backbone_weights=str(tmp_path / "missing.pth"))
    trained = build("fcos")
    torch.save(trained.net.state_dict(), tmp_path / "fcos.pth")
    torch.manual_seed(123)  # a different initialisation, overwritten by the file
    loaded = MODELS.build(
        {"name": "fcos", "backbone": "tiny", **SMALL["fcos"], "weights": str(tmp_path / "fcos.pth")},
        num_classes=3,
        image_size=64,
    )
    for a, b in zip(trained.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.warns(UserWarning, match="not loaded"):  # another class count: the class head stays new
        other = MODELS.build(
            {"name": "fcos", "backbone": "tiny", **SMALL["fcos"], "weights": str(tmp_path / "fcos.pth")},
            num_classes=5,
            image_size=64,
        )
    assert torch.equal(other.net.backbone.body["0"][0][0].weight, trained.net.backbone.body["0"][0][0].weight)


def test_backbone_weights_and_frozen_stages(tmp_path) -> None:
    from visionkit.tasks.detection.backbones import TINY_WIDTHS, TinyBackbone

    torch.manual_seed(5)
    trunk = TinyBackbone(TINY_WIDTHS["tiny"])
    torch.save(trunk.state_dict(), tmp_path / "tiny.pth")
    model = build("fcos", backbone_weights=str(tmp_path / "tiny.pth"), frozen_stages=1)
    assert torch.equal(model.net.backbone.body["0"][0][0].weight, trunk[0][0][0].weight)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(
        n.startswith(("net.backbone.body.0.", "net.backbone.body.1.", "net.backbone.body.2.")) for n in frozen
    )  # stages up to stride 8 (the first level)
    assert type(model.net.backbone.body["0"][0][1]).__name__ == "FrozenBatchNorm2d"  # default with weights
