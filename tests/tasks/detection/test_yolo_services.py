"""The YOLO detector through the core: its packaged recipe, an Ultralytics-style data.yaml, explain and profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import visionkit
from tests.conftest import merged, run_tool
from tests.tasks.detection.helpers import write_yolo
from tests.tasks.detection.test_end_to_end import ENV, SHAPES
from visionkit.deploy.explain import Explainer, explain

SMALL = [
    f"data.train={SHAPES}",
    f"data.val={SHAPES}",
    "data.image_size=64",
    "data.batch_size=4",
    "trainer.max_steps=2",
    "trainer.progress=false",
    "detection.num_samples=0",
]


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """det/yolo_n.yaml (mosaic and all) trained two steps on tiny shapes through tools/train.py."""
    run = tmp_path_factory.mktemp("yolo") / "run"
    proc = run_tool("train", "--config", "det/yolo_n.yaml", *SMALL, "--work-dir", str(run), env=ENV)
    assert proc.returncode == 0, proc.stderr
    return run


def test_the_packaged_recipe_trains_with_mosaic(yolo_run: Path) -> None:
    cfg = yaml.safe_load((yolo_run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "yolo" and cfg["data"]["mosaic"]["p"] > 0 and cfg["trainer"]["ema"]
    assert (yolo_run / "checkpoints" / "last.pt").is_file()


def test_trains_on_an_ultralytics_style_data_yaml(tmp_path: Path) -> None:
    labels = {
        "train/a": "0 0.5 0.5 0.4 0.3\n2 0.2 0.3 0.2 0.2\n",
        "train/b": "1 0.4 0.6 0.5 0.5\n",
        "val/c": "2 0.5 0.5 0.3 0.6\n",
    }
    data_yaml = write_yolo(tmp_path / "data", labels, {"train/a": (80, 60), "train/b": (64, 64), "val/c": (50, 70)})
    spec = f"{{name: yolo, data_yaml: {data_yaml}}}"
    overrides = merged(*SMALL, f"data.train={spec}", f"data.val={spec}", "data.mosaic.p=1.0")
    result = visionkit.train("det/yolo_n.yaml", overrides, work_dir=tmp_path / "run")
    assert result.summary["steps"] == 2 and "val/mAP" in result.summary["final"]  # 2 images, batch 4: a step per epoch
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"]["class_names"] == [
        "red",
        "green",
        "blue",
    ]


def test_eigencam_keeps_to_the_image_inside_the_letterbox(yolo_run: Path, tmp_path: Path) -> None:
    image = tmp_path / "images" / "scene.png"
    image.parent.mkdir()
    pixels = np.full((60, 48, 3), 30, np.uint8)
    pixels[10:30, 8:30] = (220, 40, 40)
    Image.fromarray(pixels).save(image)
    out = explain(yolo_run / "checkpoints" / "last.pt", [image], tmp_path / "x", method="eigencam", min_side=0)
    (record,) = out["explanations"]
    assert record["target_layer"] == "backbone" and Image.open(tmp_path / "x" / record["overlay"]).size == (48, 60)
    task, model, _ = visionkit.load_model(yolo_run / "checkpoints" / "last.pt", device="cpu")
    explainer = Explainer(task, model, "eigencam", options={"score_threshold": 0.0})
    result = explainer.explain_image(task.read_input(image, explainer.options))
    explainer.close()
    assert explainer.feature_map.window == (0.0, 6 / 64, 1.0, 57 / 64)  # 60x48 -> 64x51, 6 grey columns left
    assert result.cam.shape == (60, 48) and result.cam.max() > 0


def test_profile_measures_eager_and_onnxruntime(yolo_run: Path, tmp_path: Path) -> None:
    args = ["--batch", "1", "--iters", "2", "--no-compile", "--device", "cpu", "--out", str(tmp_path / "p")]
    proc = run_tool("profile", str(yolo_run), *args, env=ENV)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert record["model"] == "yolo" and record["flops"] > 0 and record["params"]["total"] > 1_000_000
    assert {r["runtime"] for r in record["rows"] if r["error"] is None} == {"eager", "onnxruntime"}
