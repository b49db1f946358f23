"""The synthetic shapes data: generated once into the cache as COCO, read back by the COCO loader, tight boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visionkit.errors import ConfigError
from visionkit.tasks.detection import shapes
from visionkit.tasks.detection.shapes import render_image, shapes_dataset

SMALL = {"image_size": 48, "num_train": 6, "num_val": 3, "min_size": 8, "max_size": 24, "max_objects": 3}


def test_generated_once_into_the_cache_and_read_back_as_coco(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VISIONKIT_CACHE", str(tmp_path))
    train = shapes_dataset(split="train", **SMALL)
    val = shapes_dataset(split="val", **SMALL)
    folders = [p for p in tmp_path.iterdir() if p.name.startswith("shapes-v")]
    assert len(folders) == 1 and not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp left over
    root = folders[0]
    assert json.loads((root / "params.json").read_text())["image_size"] == 48
    assert len(train) == 6 and len(val) == 3 and train.class_names == ["circle", "square", "triangle", "cross"]
    assert train.coco.dataset == json.loads((root / "annotations_train.json").read_text())
    for ds in (train, val):
        for i in range(len(ds)):
            image, target = ds[i]
            assert tuple(image.shape) == (3, 48, 48)
            assert 1 <= len(target["boxes"]) <= 3
            assert float(target["boxes"].min()) >= 0 and float(target["boxes"].max()) <= 48
    monkeypatch.setattr(shapes, "generate", lambda *a, **k: pytest.fail("regenerated instead of reusing the cache"))
    assert len(shapes_dataset(split="train", **SMALL)) == 6
    other = {**SMALL, "seed": 1}
    monkeypatch.undo()
    monkeypatch.setenv("VISIONKIT_CACHE", str(tmp_path))
    shapes_dataset(split="val", **other)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("shapes-v")]) == 2  # new params, new folder


def test_boxes_fit_the_drawn_shapes_tightly() -> None:
    params = {
        "image_size": 64,
        "num_classes": 6,
        "min_objects": 1,
        "max_objects": 1,
        "min_size": 10.0,
        "max_size": 40.0,
        "max_overlap": 0.3,
        "clutter": 0,
        "noise": 0.0,
    }
    rng = np.random.default_rng(0)
    for _ in range(12):
        image, objects = render_image(rng, params)
        pixels = np.asarray(image, np.int32)
        background = pixels[:, :1, :]  # the background is a vertical gradient: constant along each row
        changed = np.abs(pixels - background).sum(-1) > 24
        changed[:, 0] = False
        ys, xs = np.nonzero(changed)
        ((box, _cls),) = objects
        if box[0] < 1.5:  # the object touches column 0, used as the background reference
            continue
        assert abs(xs.min() - box[0]) <= 1.0 and abs(xs.max() + 1 - box[2]) <= 1.0
        assert abs(ys.min() - box[1]) <= 1.0 and abs(ys.max() + 1 - box[3]) <= 1.0


def test_bad_parameters_are_config_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VISIONKIT_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="num_classes is 9"):
        shapes_dataset(num_classes=9)
    with pytest.raises(ConfigError, match="min_size <= max_size < image_size"):
        shapes_dataset(image_size=32, max_size=40)
    with pytest.raises(ConfigError, match="split is 'test'"):
        shapes_dataset(split="test")
