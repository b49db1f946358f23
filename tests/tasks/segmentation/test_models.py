"""U-Net on timm encoders, torchvision models, auxiliary losses and local weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from visionkit import StepContext
from visionkit.errors import ConfigError
from visionkit.registry import TASKS

from .conftest import build_model


@pytest.mark.parametrize(
    ("encoder", "decoder"),
    [
        ("resnet10t", [32, 16, 16, 8, 8]),  # five feature levels, strides 2..32
        ("test_convnext", [16, 16, 8, 8]),  # four levels, strides 4..32
    ],
)
def test_unet_gives_logits_at_any_input_size(encoder: str, decoder: list[int]) -> None:
    model = build_model({"name": "unet", "encoder": encoder, "decoder_channels": decoder}, num_classes=5).eval()
    for size in ((64, 64), (50, 70)):
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)
    model.train()(torch.randn(2, 3, 40, 40)).mean().backward()
    assert model.encoder.feature_info.channels() and all(p.grad is not None for p in model.parameters())


def test_unet_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'resnet81' is not a timm model.* Did you mean"):
        build_model({"name": "unet", "encoder": "resnet81"}, num_classes=3)
    with pytest.raises(ConfigError, match=r"decoder_channels has 2 entries .* 5 feature levels"):
        build_model({"name": "unet", "encoder": "resnet10t", "decoder_channels": [8, 8]}, num_classes=3)
    with pytest.raises(ConfigError, match="does not exist"):
        build_model({"name": "unet", "encoder": "resnet10t", "encoder_weights": "/nope.pth"}, num_classes=3)


def test_unet_loads_a_local_timm_encoder_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = timm.create_model("resnet10t")
    torch.save(reference.state_dict(), tmp_path / "enc.pth")
    model = build_model(
        {"name": "unet", "encoder": "resnet10t", "encoder_weights": str(tmp_path / "enc.pth")}, num_classes=3
    )
    assert torch.equal(model.encoder.conv1[0].weight, reference.conv1[0].weight)
    assert torch.equal(model.encoder.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


@pytest.mark.parametrize(
    ("name", "spec", "has_aux"),
    [
        ("fcn", {"backbone": "resnet50", "aux_loss": False}, False),
        ("deeplabv3", {"backbone": "mobilenet_v3_large"}, True),
        ("lraspp", {}, False),
    ],
)
def test_torchvision_models_train_with_aux_and_predict_plain_logits(name: str, spec: dict, has_aux: bool) -> None:
    model = build_model({"name": name, **spec}, num_classes=3).train()
    out = model(torch.randn(2, 3, 48, 40))
    if has_aux:
        assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 3, 48, 40)
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 48, 40)
    assert model.eval()(torch.randn(1, 3, 48, 40)).shape == (1, 3, 48, 40)


def test_torchvision_weights_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model("lraspp", num_classes=3).eval()
    torch.save(source.net.state_dict(), tmp_path / "lraspp.pth")
    copy = build_model({"name": "lraspp", "weights": str(tmp_path / "lraspp.pth")}, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(copy(x), source(x))
    # another class count: everything but the differently shaped classifier layers is loaded
    other = build_model({"name": "lraspp", "weights": str(tmp_path / "lraspp.pth")}, num_classes=5)
    assert torch.equal(other.net.backbone["0"][0].weight, source.net.backbone["0"][0].weight)
    assert other.net.classifier.low_classifier.weight.shape[0] == 5
    with pytest.raises(ConfigError, match="does not exist"):
        build_model({"name": "fcn", "weights": str(tmp_path / "missing.pth")}, num_classes=3)
    with pytest.raises(ConfigError, match=r"'resnet34' is not available for fcn"):
        build_model({"name": "fcn", "backbone": "resnet34"}, num_classes=3)


def test_training_step_adds_the_weighted_auxiliary_loss() -> None:
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main = torch.nn.Conv2d(3, 3, 1)
            self.aux = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": self.main(x), "aux": self.aux(x)[..., ::2, ::2]}  # aux at half resolution

    from visionkit import load_config

    cfg = load_config({"task": "seg", "data": {"num_classes": 3}, "segmentation": {"aux_weight": 0.25}})
    task = TASKS.get("seg")(cfg)
    model = TwoHeads()
    task.setup(model, torch.device("cpu"))
    images, mask = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    out = task.training_step({"image": images, "mask": mask}, StepContext(model, model, torch.device("cpu")))
    main = torch.nn.functional.cross_entropy(model.main(images), mask)
    aux_logits = torch.nn.functional.interpolate(model.aux(images)[..., ::2, ::2], size=(8, 8), mode="bilinear")
    aux = torch.nn.functional.cross_entropy(aux_logits, mask)
    assert out["loss"].item() == pytest.approx(main.item() + 0.25 * aux.item(), abs=1e-5)
    assert out["loss_aux"].item() == pytest.approx(aux.item(), abs=1e-5)
