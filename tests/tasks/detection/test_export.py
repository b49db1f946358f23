"""Detection export: post-processing in the graph for all five families, the detection parity check, the stand-in."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import visionkit
from tests.conftest import merged
from tests.tasks.detection.helpers import write_image
from tests.tasks.detection.test_end_to_end import FCOS, TINY_DET
from visionkit import load_config
from visionkit.data.facts import DataFacts
from visionkit.engine.export_spec import ExportOptions, ExportSpec
from visionkit.errors import ConfigError
from visionkit.registry import MODELS, TASKS
from visionkit.tasks.detection.export import DetectionExportedModel, compare_detections

FAMILIES = {
    "fasterrcnn": {
        "backbone": "tiny",
        "strides": [8, 16, 32],
        "fpn_channels": 16,
        "representation_size": 32,
        "rpn_pre_nms_top_n": 50,
        "rpn_post_nms_top_n": 20,
    },
    "retinanet": {"backbone": "tiny", "fpn_channels": 16, "score_thresh": 0.005},  # untrained: scores ~0.01
    "fcos": {"backbone": "tiny", "fpn_channels": 64, "head_convs": 1},
    "ssdlite": {"backbone": "tiny", "extra_channels": [32, 32, 16, 16]},
    "yolo": {"size": "n"},
}
NAMES = ["boxes", "scores", "labels"]


def make_task():
    """A detection task at image size 64 with three classes (no data read)."""
    task = TASKS.get("det")(load_config({"task": "det", "data": {"image_size": 64}}))
    task.facts = DataFacts(class_names=["a", "b", "c"], category_ids=[1, 2, 3], channels=3, image_size=64)
    return task


def tiny_detector(name: str) -> torch.nn.Module:
    """A tiny detector whose untrained weights are jittered, so its scores are not all tied (eval mode)."""
    torch.manual_seed(0)
    model = MODELS.build({"name": name, **FAMILIES[name]}, num_classes=3, image_size=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def export_onnx(spec: ExportSpec, path: Path) -> Path:
    """The spec through the tracing ONNX exporter, as tools/export.py writes it."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module,
            spec.example,
            str(path),
            dynamo=False,
            opset_version=17,
            dynamic_axes=spec.dynamic_axes(),
            input_names=[i.name for i in spec.inputs],
            output_names=[o.name for o in spec.outputs],
        )
    return path


class OrtSession:
    """The runtime session's interface: run(*tensors) -> list of tensors."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        feed = {n: t.numpy() for n, t in zip(self.names, inputs, strict=True)}
        return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feed)]


class TracedSession:
    """A TorchScript trace of the spec's module behind the same interface."""

    def __init__(self, spec: ExportSpec) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            self.module = torch.jit.trace(spec.module, spec.example, check_trace=False, strict=False)

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(self.module(*inputs))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_exported_graph_matches_eager_on_images_of_several_sizes(name, tmp_path) -> None:
    task = make_task()
    spec = task.export_spec(tiny_detector(name), ExportOptions())
    sessions = [OrtSession(export_onnx(spec, tmp_path / "model.onnx")), TracedSession(spec)]
    # 33x47 -> 44x64 inside the model: torchvision's traced resize sizes it in float32 (44x63); ours does not
    samples = [(torch.rand(3, 40, 100), {}), (torch.rand(3, 33, 47), {})]
    inputs = spec.make_inputs(None, 2) + spec.make_inputs(samples, 2)
    assert [tuple(x.shape[-2:]) for (x,) in inputs] == [(64, 64), (48, 80), (40, 100), (33, 47)]
    found = 0
    for example in inputs:
        with torch.no_grad():
            reference = spec.module(*example)
        for session in sessions:
            rows = spec.compare(reference, session.run(*example), NAMES)
            assert [r.output for r in rows] == NAMES
            assert all(r.passed for r in rows), (type(session).__name__, tuple(example[0].shape), rows)
        found += len(reference[1])
        if len(reference[1]):  # boxes in the input image's pixels, labels 0..C-1
            assert float(reference[0][:, 2].max()) <= example[0].shape[-1] + 1e-3
            assert 0 <= int(reference[2].min()) and int(reference[2].max()) < 3
    assert found > 0  # the check compared real detections


def test_spec_signature_notes_and_refused_options() -> None:
    task = make_task()
    spec = task.export_spec(tiny_detector("ssdlite"), ExportOptions(image_size=96))
    assert [i.name for i in spec.inputs] == ["image"] and [o.name for o in spec.outputs] == NAMES
    assert tuple(spec.example[0].shape) == (1, 3, 96, 96)
    assert spec.dynamic_axes() == {
        "image": {2: "height", 3: "width"},
        "boxes": {0: "detections"},
        "scores": {0: "detections"},
        "labels": {0: "detections"},
    }
    assert spec.outputs[2].dtype == "int64"
    assert spec.notes["score_thresh"] == 0.01 and spec.notes["detections_per_img"] == 100
    assert spec.notes["resize"] == {"fixed_size": [64, 64]} and "xyxy" in spec.notes["boxes"]
    with pytest.raises(ConfigError, match="one image per call"):
        task.export_spec(tiny_detector("ssdlite"), ExportOptions(dynamic_batch=True))
    with pytest.raises(ConfigError, match="classification and segmentation"):
        task.export_spec(tiny_detector("ssdlite"), ExportOptions(softmax=True))


def detections(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    """n detections with distinct scores (descending), boxes in a 100-pixel image, labels 0..2."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 30], 1)
    scores = torch.linspace(0.9, 0.2, n)
    return [boxes, scores, torch.randint(0, 3, (n,), generator=g)]


def verdict(reference, exported, **kwargs) -> dict[str, tuple[bool, float, str]]:
    return {
        r.output: (r.passed, r.max_abs_diff, r.detail) for r in compare_detections(reference, exported, NAMES, **kwargs)
    }


def test_compare_passes_on_reordered_equal_detections_and_fails_on_perturbed_ones() -> None:
    ref = detections()
    order = torch.tensor([1, 0, 2, 5, 4, 3])
    assert all(passed for passed, _, _ in verdict(ref, [t[order] for t in ref]).values())
    assert all(passed for passed, _, _ in verdict([t[:0] for t in ref], [t[:0] for t in ref]).values())

    moved = [t.clone() for t in ref]
    moved[0][3, 2] += 0.01
    got = verdict(ref, moved)
    assert not got["boxes"][0] and got["boxes"][1] == pytest.approx(0.01, abs=1e-5)
    assert got["scores"][0] and got["labels"][0]

    dropped = [torch.cat([t[:2], t[3:]]) for t in ref]
    got = verdict(ref, dropped)
    assert not any(passed for passed, _, _ in got.values())
    assert "image has 6 detections in PyTorch, 5 in the export" in got["boxes"][2]

    relabelled = [t.clone() for t in ref]
    relabelled[2][4] = (relabelled[2][4] + 1) % 3
    got = verdict(ref, relabelled)
    assert not got["labels"][0] and "1 of 6 matched detections have another label" in got["labels"][2]
    assert got["boxes"][0] and got["scores"][0]

    rescored = [t.clone() for t in ref]
    rescored[1][2] += 1e-3
    assert not verdict(ref, rescored)["scores"][0]


def test_near_equal_scores_may_swap_only_at_a_cut_off() -> None:
    ref = detections()
    ref[1][-1] = 0.05
    other = detections(seed=1)[0][-1]
    swapped = [t.clone() for t in ref]
    swapped[0][-1], swapped[1][-1] = other, 0.05 + 5e-5  # another box with a near-equal lowest score
    assert all(p for p, _, _ in verdict(ref, swapped, max_detections=6).values())
    assert not all(p for p, _, _ in verdict(ref, swapped, max_detections=100).values())  # not capped: a real change
    middle = [t.clone() for t in ref]
    middle[0][2] = other
    assert not verdict(ref, middle, max_detections=6)["boxes"][0]
    # NMS between near-tied overlapping boxes of one class may keep the other one
    flipped = [t.clone() for t in ref]
    flipped[0][2] = ref[0][2] + 1.0  # IoU > 0.6 with the original box (sides >= 10 px)
    flipped[1][2] += 5e-5
    assert all(p for p, _, _ in verdict(ref, flipped, nms_thresh=0.5).values())
    assert "1 near-tied detection(s) swapped by NMS" in verdict(ref, flipped, nms_thresh=0.5)["boxes"][2]
    assert not verdict(ref, flipped)["boxes"][0] and not verdict(ref, middle, nms_thresh=0.5)["boxes"][0]
    # a detection at the score threshold may be on one side only; one above it may not
    assert all(p for p, _, _ in verdict(ref, [t[:-1] for t in ref], score_thresh=0.05).values())
    assert not verdict(ref, [t[1:] for t in ref], score_thresh=0.05)["boxes"][0]


def test_exported_model_stands_in_for_the_eager_detector(tmp_path) -> None:
    task, model = make_task(), tiny_detector("fasterrcnn")
    spec = task.export_spec(model, ExportOptions())
    session = OrtSession(export_onnx(spec, tmp_path / "model.onnx"))
    stand_in = task.exported_model(session, {"outputs": [o.to_dict() for o in spec.outputs]})
    assert isinstance(stand_in, DetectionExportedModel) and not list(stand_in.parameters())
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80), torch.rand(3, 64, 64)]
    with torch.no_grad():
        eager = model(images)
    exported = stand_in(images)
    assert sum(len(o["scores"]) for o in eager) > 0
    for e, x in zip(eager, exported, strict=True):
        rows = compare_detections([e[k] for k in NAMES], [x[k] for k in NAMES], NAMES)
        assert all(r.passed for r in rows), rows
        assert x["labels"].dtype == torch.int64
    # through the task's own predict_batch: boxes back in the original image's pixels
    inputs = [(image, (image.shape[-2] * 2, image.shape[-1] * 2)) for image in images]
    for e, x in zip(task.predict_batch(model, inputs, {}), task.predict_batch(stand_in, inputs, {}), strict=True):
        assert len(e["scores"]) == len(x["scores"])
        order_e, order_x = e["scores"].argsort(), x["scores"].argsort()
        assert torch.allclose(e["bbox"][order_e], x["bbox"][order_x], atol=1e-2)


YOLO_N = ["model={_delete_: true, name: yolo, size: n}", "data.image_size=64"]  # 48 px shapes, letterboxed to 64


@pytest.mark.parametrize(("model", "limit"), [(FCOS, 100), (YOLO_N, 300)], ids=["fcos", "yolo_n"])
def test_tools_export_of_a_trained_checkpoint_predicts_like_the_checkpoint(model, limit, tmp_path, capsys) -> None:
    from visionkit.cli.deploy import export_main

    run = tmp_path / "run"
    visionkit.train(
        None, merged(*TINY_DET, *model, "trainer.progress=false", "detection.num_samples=0"), task="det", work_dir=run
    )
    assert export_main([str(run), "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "parity check passed on 6 validation images" in out and "labels" in out
    sidecar = json.loads((tmp_path / "x" / "model.onnx.json").read_text())
    assert [o["name"] for o in sidecar["outputs"]] == NAMES and sidecar["inputs"][0]["shape"] == [
        1,
        3,
        "height",
        "width",
    ]
    assert sidecar["notes"]["detections_per_img"] == limit and sidecar["check"]["passed"] is True
    assert export_main([str(run), "--out", str(tmp_path / "y"), "--dynamic-batch"]) == 2  # a ConfigError
    assert "one image per call" in capsys.readouterr().err
    for i, (w, h) in enumerate([(48, 48), (64, 40), (30, 56)]):
        write_image(tmp_path / "in" / f"im{i}.png", w, h, seed=i)
    opts = {"progress": False, "score_threshold": 0.0}
    exported = visionkit.predict(tmp_path / "x" / "model.onnx", [tmp_path / "in"], tmp_path / "a", **opts)
    reference = visionkit.predict(run, [tmp_path / "in"], tmp_path / "b", **opts)
    for got, want in zip(exported["predictions"], reference["predictions"], strict=True):
        assert (got["width"], got["height"]) == (want["width"], want["height"])
        assert len(got["detections"]) == len(want["detections"]) > 0
        for d in got["detections"]:  # each exported detection is one of PyTorch's (rounded in the record)
            assert any(
                d["class"] == e["class"]
                and abs(d["score"] - e["score"]) <= 2e-4
                and np.allclose(d["bbox"], e["bbox"], atol=0.02)
                for e in want["detections"]
            ), d
