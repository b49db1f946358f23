"""model.pretrained through the libraries' own caches, filled here by hand: nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision import models as tv_models

from tests.conftest import TINY_DATA
from visionkit import load_config
from visionkit.cli import train_main
from visionkit.data.facts import DataFacts
from visionkit.engine.hubs import hub_file
from visionkit.engine.weights import skip_pretrained, weights_reports
from visionkit.errors import ConfigError
from visionkit.registry import MODELS, TASKS

TIMM_REPO = "timm/test_resnet.r160_in1k"  # test_resnet's default pretrained tag (a 0.5M-parameter ResNet)


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty Hugging Face and torch.hub caches under tmp_path, offline, as a user would set them up."""
    import huggingface_hub.constants as hf_constants

    hf_home, torch_home = tmp_path / "hf", tmp_path / "torch"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    # huggingface_hub reads these variables once, at import: point the live constants at the same places
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() then follows TORCH_HOME
    return {"hf": hf_home / "hub", "torch": torch_home / "hub" / "checkpoints"}


def fill_hf_cache(cache: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """The layout huggingface_hub writes: refs/main names a snapshot holding model.safetensors."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def fill_torch_cache(weights: tv_models.WeightsEnum, state: dict[str, torch.Tensor]) -> Path:
    """torch.hub keeps a download at $TORCH_HOME/hub/checkpoints/<the URL's file name>."""
    file = hub_file(weights.url)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, file)
    return file


def weights_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_timm_classifier_loads_the_cached_tensors_and_a_new_7_class_head(caches, capsys) -> None:
    torch.manual_seed(0)
    file = weights_of(timm.create_model("test_resnet").state_dict())  # the default 1000-class head
    fill_hf_cache(caches["hf"], TIMM_REPO, file)
    cfg = load_config(None, ["model.name=timm/test_resnet", "model.pretrained=true"], task="cls")
    model = TASKS.get(cfg["task"])(cfg).build_model(DataFacts(num_classes=7, channels=3))
    own = model.state_dict()
    body = [k for k in file if not k.startswith("fc.")]
    assert len(body) > 50 and all(torch.equal(own[k], file[k]) for k in body)
    assert model.fc.weight.shape[0] == 7 and model.fc.bias.shape == (7,)
    assert not torch.equal(model.fc.weight, file["fc.weight"][:7])
    (report,) = weights_reports(model)
    assert sorted(report.loaded) == sorted(body) and report.heads == {"fc": (1000, 7)}
    assert set(report.skipped) == set(report.missing) == {"fc.weight", "fc.bias"} and not report.unexpected
    line = capsys.readouterr().out.strip()
    assert line == (
        f"pretrained timm/test_resnet (hf-hub:{TIMM_REPO}): loaded {len(body)} tensors; "
        "re-initialised head fc (1000 -> 7 classes); skipped 0"
    )
    # in_chans=1: the stem's RGB filters are summed, as timm does
    gray = MODELS.build(
        {"name": "timm/test_resnet", "pretrained": True}, task="classification", num_classes=7, in_chans=1
    )
    assert torch.allclose(gray.conv1[0].weight, file["conv1.0.weight"].sum(1, keepdim=True))


def test_unet_encoder_matches_timms_own_loader(caches) -> None:
    # test_convnext's feature wrapper renames stages.0 -> stages_0; timm's own loader is the reference
    torch.manual_seed(1)
    path = fill_hf_cache(caches["hf"], "timm/test_convnext.r160_in1k", timm.create_model("test_convnext").state_dict())
    model = MODELS.build({"name": "unet", "encoder": "test_convnext", "pretrained": True}, num_classes=7)
    reference = timm.create_model(
        "test_convnext", features_only=True, pretrained=True, pretrained_cfg_overlay={"file": str(path)}
    )
    expected = weights_of(reference.state_dict())
    got = model.encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    (report,) = weights_reports(model)
    assert len(report.loaded) == len(expected) and not report.missing
    assert set(report.unexpected) == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    assert model.head.out_channels == 7


def test_torchvision_detection_backbone_from_the_torch_hub_cache(caches, capsys) -> None:
    torch.manual_seed(2)
    reference = tv_models.resnet18()
    enum = tv_models.ResNet18_Weights.DEFAULT
    file = fill_torch_cache(enum, reference.state_dict())
    assert file.name == "resnet18-f37072fd.pth"  # torchvision's own file name for these weights
    spec = {"name": "fcos", "backbone": "resnet18", "pretrained": True, "fpn_channels": 64, "head_convs": 1}
    model = MODELS.build(spec, task="detection", num_classes=7, image_size=64)
    body = model.net.backbone.body.state_dict()
    expected = weights_of(reference.state_dict())
    assert len(body) > 50 and all(torch.equal(v, expected[k]) for k, v in body.items())
    assert type(model.net.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"  # frozen statistics by default
    (report,) = weights_reports(model)
    assert len(report.loaded) == len(expected) and str(file) in report.source
    assert f"loaded {len(expected)} tensors" in capsys.readouterr().out


def test_torchvision_segmentation_model_reinitialises_both_class_layers(caches) -> None:
    torch.manual_seed(3)
    builder = tv_models.segmentation.lraspp_mobilenet_v3_large
    reference = builder(weights=None, weights_backbone=None, num_classes=21)  # the COCO/VOC class count
    fill_torch_cache(tv_models.get_model_weights(builder).DEFAULT, reference.state_dict())
    model = MODELS.build({"name": "lraspp", "pretrained": True}, task="segmentation", num_classes=7)
    heads = ("classifier.low_classifier.", "classifier.high_classifier.")
    file, own = weights_of(reference.state_dict()), model.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in file.items() if not k.startswith(heads))
    for layer in (model.net.classifier.low_classifier, model.net.classifier.high_classifier):
        assert layer.out_channels == 7
    assert not torch.equal(own["classifier.low_classifier.weight"], file["classifier.low_classifier.weight"][:7])
    (report,) = weights_reports(model)
    assert report.heads == {"classifier.low_classifier": (21, 7), "classifier.high_classifier": (21, 7)}


def test_train_with_pretrained_weights_and_exit_2_offline_with_an_empty_cache(caches, tmp_path, capsys) -> None:
    args = ["--task", "cls", "model.name=timm/test_resnet", "model.pretrained=true", *TINY_DATA]
    status = train_main([*args, "--work-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    cache = caches["hf"] / "models--timm--test_resnet.r160_in1k"
    assert status == 2 and str(cache) in err and "Traceback" not in err
    assert f"hf download {TIMM_REPO}" in err and "model.weights=" in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "empty").exists()

    torch.manual_seed(4)
    fill_hf_cache(caches["hf"], TIMM_REPO, timm.create_model("test_resnet").state_dict())
    assert train_main([*args, "trainer.max_steps=2", "--work-dir", str(tmp_path / "run")]) == 0
    assert "re-initialised head fc (1000 -> 10 classes)" in capsys.readouterr().out  # digits: 10 classes

    import shutil

    import visionkit

    shutil.rmtree(caches["hf"])  # the run's checkpoint holds its weights: eval and resume need no cache
    task, model, _ = visionkit.load_model(tmp_path / "run")
    assert model.fc.out_features == 10
    assert train_main([*args, "trainer.max_steps=3", "--work-dir", str(tmp_path / "run"), "--resume", "auto"]) == 0


def test_torch_hub_offline_error_names_the_file_and_how_to_fetch_it(caches) -> None:
    expected = caches["torch"] / "resnet18-f37072fd.pth"
    with pytest.raises(ConfigError, match="torch.hub cache") as info:
        MODELS.build({"name": "fcos", "backbone": "resnet18", "pretrained": True}, num_classes=3, image_size=64)
    message = str(info.value)
    assert str(expected) in message and "get_weight('ResNet18_Weights.IMAGENET1K_V1')" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_local_files_choice_errors_and_checkpoint_rebuilds(caches, tmp_path) -> None:
    torch.manual_seed(5)
    source = timm.create_model("test_resnet", num_classes=7)
    save_file(source.state_dict(), str(tmp_path / "mine.safetensors"))
    spec = {"name": "timm/test_resnet", "weights": str(tmp_path / "mine.safetensors")}
    model = MODELS.build(spec, task="classification", num_classes=7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights_of(source.state_dict()).items())
    with pytest.raises(ConfigError, match="keep one"):
        MODELS.build({**spec, "pretrained": True}, task="classification", num_classes=7)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        MODELS.build({"name": "fcos", "backbone": "tiny", "pretrained": True}, num_classes=3, image_size=64)
    with skip_pretrained():  # rebuilding from a checkpoint: the empty cache is never consulted
        rebuilt = MODELS.build({"name": "timm/test_resnet", "pretrained": True}, task="classification", num_classes=7)
    assert not weights_reports(rebuilt)
