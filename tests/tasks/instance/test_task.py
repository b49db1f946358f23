"""The instance task end to end on tiny shapes-instance: Mask R-CNN trains, mask AP equals an independent
pycocotools run on the same RLEs, resume is exact, bad configs are named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from torchmetrics.detection import MeanAveragePrecision

import visionkit
from tests.conftest import ROOT, run_tool
from visionkit.deploy.export import export_model
from visionkit.engine.checkpoint import load_checkpoint
from visionkit.errors import ConfigError
from visionkit.tasks.detection.datasets import quiet_coco
from visionkit.tasks.instance.export import SingleImageSegmenter, compare_instances
from visionkit.tasks.instance.masks import box_of, encode
from visionkit.tasks.instance.metrics import CocoInstanceMAP
from visionkit.tasks.instance.task import rle_texts
from visionkit.tasks.instance.visualize import MASK_ALPHA, draw_instances, instance_color

SHAPES = (
    "{name: shapes_instance, image_size: 48, num_train: 16, num_val: 6, min_size: 10, max_size: 28, max_objects: 3}"
)
TINY = [
    f"data.train={SHAPES}",
    f"data.val={SHAPES}",
    "data.image_size=48",
    "data.batch_size=8",
    "trainer.epochs=2",
    "trainer.progress=false",
    "detection.num_samples=0",
    "model.rpn_pre_nms_top_n=100",
    "model.rpn_post_nms_top_n=50",
    "model.representation_size=32",
    "model.mask_width=16",
    "model.fpn_channels=32",
]
ENV = {"OMP_NUM_THREADS": "1"}
MASKRCNN = str(ROOT / "configs" / "inst" / "maskrcnn.yaml")  # TINY's model keys are Mask R-CNN's
CUTS = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh", "max_detections": "detections_per_img"}


@pytest.fixture(scope="module")
def inst_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Mask R-CNN config (tiny backbone) trained two epochs on tiny data through tools/train.py."""
    run = tmp_path_factory.mktemp("inst") / "run"
    proc = run_tool("train", "--config", MASKRCNN, *TINY, "--work-dir", str(run), env=ENV)
    assert proc.returncode == 0, proc.stderr
    return run


def test_trains_and_reports_box_and_mask_ap(inst_run: Path) -> None:
    summary = json.loads((inst_run / "summary.json").read_text())
    assert summary["task"] == "instance" and summary["monitor"] == "val/mask_mAP"
    final = summary["final"]
    for key in ("val/mask_mAP", "val/mask_mAP50", "val/box_mAP", "val/box_mAP_small"):
        assert key in final and -1 <= final[key] <= 1, key
    losses = [json.loads(line) for line in (inst_run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss_mask" in record for record in losses)


def test_mask_ap_equals_torchmetrics_on_a_held_out_case() -> None:
    """Hand-made masks scored by the metric (from RLE texts, over two updates) and by torchmetrics'
    MeanAveragePrecision(iou_type="segm"), which encodes the boolean masks itself."""
    rng = np.random.default_rng(0)
    h, w = 40, 50
    images, anns, rows, texts, preds, targets = [], [], [], [], [], []
    for image_id in (1, 2, 3):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
        truth = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, 20, 2)
        truth[y : y + 15, x : x + 20] = 1
        truth[y : y + 5, x : x + 6] = 0  # not a box: mask AP differs from box AP
        box = box_of(truth)
        anns.append(
            {"id": image_id, "image_id": image_id, "category_id": 1, "segmentation": encode(truth), "iscrowd": 0,
             "area": int(truth.sum()), "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
        )  # fmt: skip
        guesses = np.stack([np.roll(truth, shift, axis=1) for shift in (0, 3, 8)])
        scores = [0.6, 0.9, 0.3]  # the 3-pixel shift ranks first: AP below 1
        rows.append(torch.tensor([[image_id, *_xywh(g), s, 1] for g, s in zip(guesses, scores)], dtype=torch.float64))
        texts.append(rle_texts(torch.from_numpy(guesses).float()[:, None], (h, w)))
        preds.append(
            {"masks": torch.from_numpy(guesses).bool(), "scores": torch.tensor(scores), "labels": torch.ones(3).long()}
        )
        targets.append({"masks": torch.from_numpy(truth[None]).bool(), "labels": torch.ones(1).long()})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    metric = CocoInstanceMAP(quiet_coco(json.loads(json.dumps(gt))))
    metric.update({"image_ids": [1, 2], "detections": rows[:2], "masks": texts[:2]})
    metric.update({"image_ids": [3], "detections": rows[2:], "masks": texts[2:]})
    ours = metric.compute()
    reference = MeanAveragePrecision(iou_type="segm")
    reference.update(preds, targets)
    theirs = reference.compute()
    assert 0 < ours["mask_mAP"] < 1
    assert abs(ours["mask_mAP"] - float(theirs["map"])) < 1e-4
    assert abs(ours["mask_mAP75"] - float(theirs["map_75"])) < 1e-4


def _xywh(mask: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = box_of(mask)
    return [x1, y1, x2 - x1, y2 - y1]


def test_resume_is_bit_equal(inst_run: Path, tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.max_steps=3"]
    visionkit.train(MASKRCNN, overrides, work_dir=tmp_path / "half")
    visionkit.train(None, ["trainer.max_steps=4"], resume=tmp_path / "half")
    visionkit.train(MASKRCNN, [*TINY, "trainer.max_steps=4"], work_dir=tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_a_box_only_model_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'fcos' is a detection model.*predicts masks: maskrcnn, yolo_seg"):
        visionkit.train(MASKRCNN, [*TINY, "model={_delete_: true, name: fcos, backbone: tiny}"],
                        work_dir=tmp_path / "fcos")  # fmt: skip


def check_export_and_onnx_predict(run: Path, tmp_path: Path, non_square: bool = True) -> None:
    """Export passes its parity check (masks included) and predicts; with `non_square`, it also agrees on a
    40x56 noise image (the letterbox's sizes stay dynamic in the graph). Mask R-CNN's resize is detection's,
    checked there; an untrained Mask R-CNN's near-equal scores on noise reorder its NMS beyond what the check
    can tell apart from a difference."""
    sidecar = export_model(run, "onnx", tmp_path / "x")
    rows = {row["output"]: row for row in sidecar["check"]["rows"]}
    assert set(rows) == {"boxes", "scores", "labels", "masks"}
    assert all(r["max_abs_diff"] <= r["tolerance"] for r in rows.values())
    task, model, _ = visionkit.load_model(run / "checkpoints" / "last.pt", device="cpu")
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = SingleImageSegmenter(model.eval())(image)
    session = onnxruntime.InferenceSession(sidecar["path"], providers=["CPUExecutionProvider"])
    exported = session.run(None, {"image": image.numpy()})
    names = ["boxes", "scores", "labels", "masks"]
    assert exported[3].shape[1:] == (1, 40, 56) and len(exported[3]) == len(exported[0])
    cuts = {k: sidecar["notes"].get(v) for k, v in CUTS.items()}
    for row in compare_instances(eager, exported, names, **cuts) if non_square else []:
        assert row.passed, row
    Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "in.png")
    out = visionkit.predict(sidecar["path"], [str(tmp_path / "in.png")], tmp_path / "p", progress=False)
    (record,) = json.loads((tmp_path / "p" / "predictions.json").read_text())["predictions"]
    assert out["task"] == "instance" and all(d["segmentation"]["size"] == [40, 56] for d in record["detections"])


def test_export_parity_and_onnx_predict(inst_run: Path, tmp_path: Path) -> None:
    check_export_and_onnx_predict(inst_run, tmp_path, non_square=False)


def test_mask_parity_row_fails_on_a_different_mask() -> None:
    boxes, scores, labels = torch.tensor([[1.0, 1.0, 9.0, 9.0]]), torch.tensor([0.9]), torch.tensor([0])
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, 1:9, 1:9] = 0.9
    other = mask.clone()
    other[0, 0, 1:3, 1:9] = 0.1  # 16 of 64 pixels lost: IoU 0.75
    names = ["boxes", "scores", "labels", "masks"]
    same = compare_instances((boxes, scores, labels, mask), (boxes, scores, labels, mask.clone()), names)
    assert all(r.passed for r in same)
    rows = {
        r.output: r for r in compare_instances((boxes, scores, labels, mask), (boxes, scores, labels, other), names)
    }
    assert not rows["masks"].passed and abs(rows["masks"].max_abs_diff - 0.25) < 1e-9 and rows["boxes"].passed


class FixedModel(torch.nn.Module):
    """Returns two detections with known masks for any image (in the image's own pixels)."""

    def forward(self, images):
        out = []
        for image in images:
            h, w = image.shape[-2:]
            masks = torch.zeros(2, 1, h, w)
            masks[0, 0, 2:10, 3:12] = 0.9
            masks[1, 0, 5:8, 5:9] = 0.6
            boxes = torch.tensor([[3.0, 2.0, 12.0, 10.0], [5.0, 5.0, 9.0, 8.0]])
            out.append(
                {"boxes": boxes, "scores": torch.tensor([0.8, 0.2]), "labels": torch.tensor([1, 0]), "masks": masks}
            )
        return out


def test_predict_writes_each_detections_mask_as_rle(inst_run: Path, tmp_path: Path) -> None:
    task, _, _ = visionkit.load_model(inst_run / "checkpoints" / "last.pt", device="cpu")
    image = np.zeros((20, 30, 3), np.uint8)
    options = {**task.predict_options, "score_threshold": 0.5}
    inputs = [task.preprocess(image, options)]
    (found,) = task.predict_batch(FixedModel(), inputs, options)
    record = task.postprocess(found, image, options)
    (shown,) = record["detections"]  # the 0.2 one is under the threshold
    assert shown["segmentation"]["size"] == [20, 30] and shown["area"] == 8 * 9
    assert shown["class"] == task.facts.names[1]
    assert task.draw(image, found, {**options, "draw": True})["images"].size == (768, 512)  # short side 512
    picture = np.asarray(task.draw(image, found, {**options, "draw": True, "min_side": 0})["images"])
    assert picture.shape == (20, 30, 3) and picture[:10, 3:12].any()  # the shown detection, labelled
    alone = {k: v[:1] for k, v in found.items()}  # the same record without the 0.2 detection
    same = np.asarray(task.draw(image, alone, {**options, "draw": True, "min_side": 0})["images"])
    assert np.array_equal(picture, same)  # under the threshold: not drawn
    masks = [np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8)]
    masks[0][14:18, 2:8], masks[1][14:18, 20:26] = 1, 1
    drawn = np.asarray(draw_instances(image, masks, np.zeros((0, 4)), [], [], task.facts.names, min_side=0))
    assert np.allclose(drawn[15, 4], instance_color(0) * MASK_ALPHA, atol=1)  # one colour per instance
    assert np.allclose(drawn[15, 22], instance_color(1) * MASK_ALPHA, atol=1)
    assert not drawn[15, 14].any() and not np.allclose(instance_color(0), instance_color(1))
    summary = task.finish_predictions([{"input": "a.png", **record}], tmp_path, options)
    results = json.loads(Path(summary["results_file"]).read_text())
    assert len(results) == 2 and all(r["segmentation"]["size"] == [20, 30] for r in results)  # every detection
    Image.fromarray(np.full((40, 36, 3), 90, np.uint8)).save(tmp_path / "in.png")
    out = visionkit.predict(inst_run, [str(tmp_path / "in.png")], tmp_path / "p", progress=False, draw=False)
    assert out["task"] == "instance"  # the trained model runs through the whole predictor (any detections it finds)
