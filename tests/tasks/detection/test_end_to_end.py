"""Detection end to end on tiny shapes: train -> eval -> predict for FCOS and Faster R-CNN, via tools/ and the API."""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import visionkit
from tests.conftest import run_tool
from visionkit.data import cache_dir
from visionkit.errors import ConfigError, DataError

SHAPES = "{name: shapes, image_size: 48, num_train: 16, num_val: 6, min_size: 10, max_size: 28, max_objects: 3}"
TINY_DET = [
    f"data.train={SHAPES}",
    f"data.val={SHAPES}",
    "data.image_size=48",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.epochs=1",
    "trainer.log_every=1",
    "detection.num_samples=2",
    "data.train_transforms=[]",
]
FCOS = ["model.fpn_channels=64", "model.head_convs=1"]
FASTER_RCNN = [
    "model={_delete_: true, name: fasterrcnn, backbone: tiny, strides: [8, 16, 32], fpn_channels: 16, "
    "representation_size: 32, rpn_pre_nms_top_n: 100, rpn_post_nms_top_n: 50}"
]
ENV = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread avoids OpenMP spin-waits on a busy 2-core machine


def val_files() -> tuple[Path, Path]:
    """The generated val annotation file and image folder of the tiny shapes data."""
    (root,) = [
        p
        for p in cache_dir().glob("shapes-v*")
        if '"image_size": 48' in (p / "params.json").read_text()
        and '"num_train": 16' in (p / "params.json").read_text()
    ]
    return root / "annotations_val.json", root / "val"


@pytest.fixture(scope="module")
def det_cache(tmp_path_factory):
    """The session's temporary cache, set before the module's runs (they start before function fixtures)."""
    if "VISIONKIT_CACHE" in os.environ:
        yield Path(os.environ["VISIONKIT_CACHE"])
        return
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.getbasetemp() / "cache"  # the folder tests/conftest.py uses
        mp.setenv("VISIONKIT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def fcos_run(tmp_path_factory, det_cache) -> Path:
    """FCOS trained for two steps through tools/train.py."""
    run = tmp_path_factory.mktemp("det") / "fcos"
    proc = run_tool("train", "--task", "det", "--work-dir", str(run), *TINY_DET, *FCOS, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/mAP" in proc.stdout and "val/AR100" in proc.stdout
    return run


@pytest.fixture(scope="module")
def rcnn_result(tmp_path_factory, det_cache):
    """Faster R-CNN trained for two steps through the Python API."""
    return visionkit.train(
        None, [*TINY_DET, *FASTER_RCNN], task="det", work_dir=tmp_path_factory.mktemp("det") / "rcnn"
    )


def test_tools_fcos_train_eval_predict(fcos_run, tmp_path) -> None:
    summary = json.loads((fcos_run / "summary.json").read_text())
    assert summary["steps"] == 2 and set(summary["per_class_AP"]) == {"circle", "square", "triangle", "cross"}
    assert (fcos_run / "samples" / "val_epoch001.png").is_file()
    best = fcos_run / "checkpoints" / "best.pt"
    proc = run_tool("eval", str(best), "--out", str(tmp_path / "metrics.json"), env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val/mAP"] == pytest.approx(summary["best"]["val/mAP"], abs=1e-9)  # eval reproduces the run
    ann, images = val_files()
    proc = run_tool(
        "predict",
        str(best),
        str(images),
        "--out",
        str(tmp_path / "pred"),
        "--option",
        f"ann_file={ann}",
        "--option",
        "score_threshold=0.2",
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "ms/image" in line]  # one line per input
    assert len(lines) == 6 and all(re.match(r"\d{6}\.png 48x48: (no detections|\d+ \w+)", line) for line in lines)
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    assert len(list((tmp_path / "pred" / "images").glob("*.png"))) == 6
    proc = run_tool("eval", "--results", str(tmp_path / "pred" / "results.json"), "--ann", str(ann), "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_file = json.loads(proc.stdout)
    assert from_file["mAP"] == pytest.approx(metrics["val/mAP"], abs=1e-6)  # same detections, same score


def test_api_on_the_tools_fcos_checkpoint(fcos_run, tmp_path) -> None:
    best = fcos_run / "checkpoints" / "best.pt"
    summary = json.loads((fcos_run / "summary.json").read_text())
    assert visionkit.evaluate(best)["val/mAP"] == pytest.approx(summary["best"]["val/mAP"], abs=1e-9)
    _, images = val_files()
    out = visionkit.predict(best, [images / "000000.png"], tmp_path / "p", score_threshold=0.0)
    assert out["num_images"] == 1 and (tmp_path / "p" / "images" / "000000.png").is_file()
    with pytest.raises(DataError, match="does not exist"):
        visionkit.predict(best, [tmp_path / "nothing-here"], tmp_path / "q")


def test_api_faster_rcnn_train_evaluate_predict(rcnn_result, tmp_path) -> None:
    assert rcnn_result.best_checkpoint.is_file() and "val/mAP" in rcnn_result.best
    summary = json.loads((rcnn_result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and "per_class_AP" in summary
    metrics = visionkit.evaluate(rcnn_result.best_checkpoint)
    assert metrics["val/mAP"] == pytest.approx(rcnn_result.best["val/mAP"], abs=1e-9)
    _, images = val_files()
    out = visionkit.predict(rcnn_result.best_checkpoint, [images], tmp_path / "p")
    assert out["num_images"] == 6 and json.loads((tmp_path / "p" / "results.json").read_text()) is not None
    proc = run_tool("eval", str(rcnn_result.best_checkpoint), "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["val/mAP"] == pytest.approx(rcnn_result.best["val/mAP"], abs=1e-9)


class Duplicates(torch.nn.Module):
    """One box found twice, as two classes (0.9 circle, 0.8 square), and another box (0.7 triangle)."""

    def forward(self, images):
        boxes = torch.tensor([[2.0, 2.0, 20.0, 20.0], [2.5, 2.0, 20.0, 20.5], [30.0, 30.0, 40.0, 40.0]])
        return [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 1, 2])}]


def test_predict_options_agnostic_nms_classes_max_det(fcos_run) -> None:
    task, _, _ = visionkit.load_model(fcos_run / "checkpoints" / "best.pt", device="cpu")
    base = {**task.predict_options, "score_threshold": 0.0}
    inputs = [task.preprocess(np.zeros((48, 48, 3), np.uint8), base)]

    def labels(**options) -> list[int]:
        (found,) = task.predict_batch(Duplicates(), inputs, {**base, **options})
        return found["labels"].tolist()

    assert labels() == [0, 1, 2] and labels(iou=0.5) == [0, 1, 2]  # per-class NMS keeps both classes
    assert labels(agnostic_nms=True) == [0, 2]  # the cross-class duplicate is gone
    assert labels(classes=["square", 2]) == [1, 2] and labels(max_det=1) == [0]
    record = task.postprocess(task.predict_batch(Duplicates(), inputs, base)[0], np.zeros((48, 48, 3)), base)
    assert task.describe(record) == "1 circle, 1 square, 1 triangle"
    with pytest.raises(ConfigError, match="'classes' has 'dog'.*circle"):
        labels(classes=["dog"])
    with pytest.raises(ConfigError, match="'iou' is 2"):
        labels(iou=2)


def write_video(path: Path, frames: int, fps: int = 10, size: tuple[int, int] = (64, 48)) -> None:
    """A small test video (a square moving over a grey background), written with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), 90, np.uint8)
            image[10:30, 2 + 3 * i : 22 + 3 * i] = 220
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_predict_gives_a_record_per_frame_and_a_video_at_the_input_rate(fcos_run, tmp_path) -> None:
    import av

    folder = tmp_path / "inputs"
    folder.mkdir()
    write_video(folder / "clip.mp4", frames=12, fps=10)
    _, images = val_files()
    (folder / "still.png").write_bytes((images / "000000.png").read_bytes())  # a folder mixing both
    proc = run_tool("predict", str(fcos_run), str(folder), "--out", str(tmp_path / "out"), env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clip.mp4: 12 frames at 10 fps in" in proc.stdout and "still.png 48x48:" in proc.stdout
    lines = (tmp_path / "out" / "frames" / "clip.mp4.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["frame"] for r in records] == list(range(12)) and all(r["width"] == 64 for r in records)
    with av.open(str(tmp_path / "out" / "videos" / "clip.mp4.mp4")) as written:
        stream = written.streams.video[0]
        assert sum(1 for _ in written.decode(stream)) == 12 and stream.average_rate == 10
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]
    clip = next(r for r in summary if r["input"].endswith("clip.mp4"))
    assert clip["frames"] == 12 and clip["video"] == "videos/clip.mp4.mp4"
    assert json.loads((tmp_path / "out" / "results.json").read_text()) is not None  # the still image's file
    strided = visionkit.predict(fcos_run, [folder / "clip.mp4"], tmp_path / "s", vid_stride=3)
    assert [r["frames"] for r in strided["predictions"]] == [4]
    with av.open(str(tmp_path / "s" / "videos" / "clip.mp4.mp4")) as written:
        assert written.streams.video[0].average_rate == Fraction(10, 3)
    with pytest.raises(DataError, match="could not be opened"):
        visionkit.predict(fcos_run, ["rtsp://127.0.0.1:9/none"], tmp_path / "r")
