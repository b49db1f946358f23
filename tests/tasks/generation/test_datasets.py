"""Generation data: image folders, classification datasets scaled to [-1, 1], repeat, config checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visionkit
from visionkit.errors import ConfigError, DataError
from visionkit.registry import DATASETS, TASKS


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _build(spec: dict, **kwargs: object):  # noqa: ANN202
    return DATASETS.build({**spec, **kwargs}, task="generation")


def test_flat_folder_is_unlabelled_scaled_and_centre_cropped(tmp_path: Path) -> None:
    stripe = np.zeros((10, 30, 3), np.uint8)
    stripe[:, 10:20] = 255  # a white middle third: the centre crop of the resized image
    for i in range(5):
        _png(tmp_path / "imgs" / f"{i}.png", stripe)
    _png(tmp_path / "imgs" / "sub" / "grey.png", np.full((8, 8, 3), 51, np.uint8))
    ds = _build({"name": "gen_folder", "root": str(tmp_path / "imgs")}, image_size=8, val_fraction=0.0)
    assert len(ds) == 6 and ds.classes == [] and ds.channels == 3
    image, label = ds[0]
    assert label == -1 and image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image.mean() > 0.8
    grey, _ = ds[5]
    assert torch.allclose(grey, torch.full((3, 8, 8), 51 / 127.5 - 1))


def test_class_subfolders_give_labels_and_split_folders_are_used(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            for i in range(count):
                _png(tmp_path / split / cls / f"{i}.png", np.full((12, 12), 200 if cls == "dog" else 0, np.uint8))
    train = _build({"name": "gen_folder", "root": str(tmp_path)}, split="train", image_size=8)
    val = _build({"name": "gen_folder", "root": str(tmp_path)}, split="val", image_size=8)
    assert len(train) == 6 and len(val) == 4 and train.classes == ["cat", "dog"] and train.channels == 1
    assert sorted(train.labels) == [0, 0, 0, 1, 1, 1]
    assert all((x.mean() > 0) == (y == 1) for x, y in (train[i] for i in range(6)))
    unlabelled = _build({"name": "gen_folder", "root": str(tmp_path), "labels": "none"}, split="train")
    assert set(unlabelled.labels) == {-1}


def test_holdout_split_is_disjoint_and_complete(tmp_path: Path) -> None:
    for i in range(20):
        _png(tmp_path / f"{i:02d}.png", np.full((8, 8), i * 10, np.uint8))
    train = _build({"name": "gen_folder", "root": str(tmp_path)}, split="train", val_fraction=0.25)
    val = _build({"name": "gen_folder", "root": str(tmp_path)}, split="val", val_fraction=0.25)
    assert len(train) == 15 and len(val) == 5
    assert not set(train.files) & set(val.files) and len(set(train.files) | set(val.files)) == 20


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        _build({"name": "gen_folder", "root": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images"):
        _build({"name": "gen_folder", "root": str(tmp_path / "empty")})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    _png(tmp_path / "bad" / "ok.png", np.zeros((8, 8), np.uint8))
    ds = _build({"name": "gen_folder", "root": str(tmp_path / "bad")}, channels=1, val_fraction=0.0)
    with pytest.raises(DataError, match="broken.png"):
        [ds[i] for i in range(len(ds))]


def test_digits_through_the_task_are_in_model_range_and_give_the_facts() -> None:
    cfg = visionkit.load_config(None, ["data.image_size=16", "data.repeat=3"], task="gen")
    task = TASKS.get("generation")(cfg)
    train = task.build_dataset("train")
    val = task.build_dataset("val")
    facts = task.data_facts(train, val)
    assert facts.num_classes == 10 and facts.channels == 1 and facts.image_size == 16
    assert facts.class_names == [str(i) for i in range(10)]
    assert task.model_defaults(facts) == {"image_size": 16, "channels": 1, "num_classes": 10}
    assert cfg["data"]["num_classes"] is None and cfg["data"]["class_names"] is None  # the config is untouched
    assert cfg["data"]["channels"] is None
    assert len(train) % 3 == 0 and len(train) // 3 + len(val) == 1797 and 350 <= len(val) <= 370
    images = torch.stack([val[i][0] for i in range(50)])
    assert images.shape == (50, 1, 16, 16) and images.min() == -1 and images.max() <= 1 and images.max() > 0.9
    base = len(train) // 3
    assert torch.equal(train[5][0], train[base + 5][0]) and train[5][1] == train[2 * base + 5][1]


@pytest.mark.parametrize(
    "override,match",
    [
        (["data.train.mean=[0.1]"], "mean/std"),
        (["generation.sampler=euler"], "generation.sampler"),
        (["generation.eval_steps=0"], "eval_steps"),
        (["generation.guidance=-1"], "guidance"),
        (["data.repeat=0"], "data.repeat"),
        (["loss.name=gan_hinge"], "computes its own loss"),
        (["generation.bogus=1"], "generation.bogus"),
    ],
)
def test_config_mistakes_are_config_errors(override: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        visionkit.load_config(None, override, task="gen")


def test_unlabelled_folder_offers_zero_classes(tmp_path: Path) -> None:
    for i in range(6):
        _png(tmp_path / f"{i}.png", np.full((8, 8), i * 40, np.uint8))
    spec = f"{{name: gen_folder, root: {tmp_path}, val_fraction: 0.0}}"
    cfg = visionkit.load_config(None, [f"data.train={spec}", f"data.val={spec}", "data.image_size=8"], task="gen")
    task = TASKS.get("generation")(cfg)
    facts = task.data_facts(task.build_dataset("train"), task.build_dataset("val"))
    assert facts.num_classes is None and facts.channels == 1
    assert task.model_defaults(facts) == {"image_size": 8, "channels": 1, "num_classes": 0}


def test_the_model_family_picks_the_task_class() -> None:
    from visionkit.data.facts import DataFacts
    from visionkit.registry import MODELS
    from visionkit.tasks.generation.diffusion_task import DiffusionTask
    from visionkit.tasks.generation.gan_task import GANTask
    from visionkit.tasks.generation.task import GenerationTask

    assert MODELS.metadata("ddpm", "generation") == {"family": "diffusion"}
    assert MODELS.metadata("dcgan", "generation") == {"family": "gan"}
    assert TASKS.get("gen") is GenerationTask and TASKS.get("generation").defaults["metrics"]
    diffusion = TASKS.get("generation")(visionkit.load_config(None, task="gen"))
    gan = TASKS.get("generation")(visionkit.load_config(None, ["model.name=dcgan"], task="gen"))
    assert type(diffusion) is DiffusionTask and type(gan) is GANTask
    assert diffusion.name == gan.name == "generation" and diffusion.scopes() == gan.scopes() == ["generation"]
    facts = DataFacts(num_classes=10, channels=1, image_size=16)
    assert not any(hasattr(t.build_model(facts), "kind") for t in (diffusion, gan))


def test_gan_config_checks_its_loss() -> None:
    cfg = visionkit.load_config(Path(__file__).resolve().parents[3] / "configs" / "gen" / "dcgan.yaml")
    assert cfg["model"]["name"] == "dcgan"
    with pytest.raises(ConfigError):
        visionkit.load_config(cfg, ["loss.name=cross_entropy"])


def test_missing_metric_files_fail_before_training(tmp_path: Path) -> None:
    for override in (f"generation.classifier={tmp_path / 'nope.pt'}", f"generation.feature_net={tmp_path / 'x.pt'}"):
        task = TASKS.get("generation")(visionkit.load_config(None, [override], task="gen"))
        with pytest.raises(ConfigError, match="generation"):
            task.build_dataset("train")
