"""Export to ONNX/TorchScript with the parity check, and prediction from the exported file (cls, seg, gen)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

import visionkit
from tests.conftest import TINY_CLS, merged
from tests.tasks.segmentation.test_end_to_end import TINY as SEG_TINY_RUN
from visionkit.cli.deploy import export_main
from visionkit.deploy.export import export_model
from visionkit.deploy.parity import ExportCheckError
from visionkit.registry import MODELS

SEG_TINY = merged(*SEG_TINY_RUN, "segmentation.num_samples=0")


@MODELS.register("test_branchy_net", task="classification")
class BranchyNet(nn.Module):
    """A classifier whose Python branch depends on the input: a trace records one branch only."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(in_chans * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        return logits if float(x.mean()) > 0 else -logits  # the tracer's example is positive, digits are not


def _digit_pngs(folder: Path, count: int = 6, offset: int = 1700) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for i in range(count):
        Image.fromarray((digits.images[offset + i] * 255 / 16).astype(np.uint8)).save(folder / f"d{i}.png")
    return folder


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cls") / "run"
    visionkit.train(None, merged(*TINY_CLS, "trainer.epochs=2", "trainer.progress=false"), task="cls", work_dir=run)
    return run


def test_onnx_export_writes_a_checked_model_and_sidecar(cls_run: Path, tmp_path: Path, capsys) -> None:
    assert export_main([str(cls_run), "--out", str(tmp_path / "x")]) == 0
    assert "parity check passed on 16 validation images" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "x" / "model.onnx.json").read_text())
    best = cls_run / "checkpoints" / "best.pt"
    assert sidecar["task"] == "classification" and sidecar["format"] == "onnx" and sidecar["file"] == "model.onnx"
    assert sidecar["data"]["class_names"] == [str(i) for i in range(10)]
    assert sidecar["inputs"][0]["name"] == "images" and sidecar["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert sidecar["outputs"][0]["name"] == "logits" and sidecar["outputs"][0]["shape"] == [1, 10]
    assert sidecar["preprocess"]["mean"] == [0.5] and sidecar["preprocess"]["std"] == [0.5]
    assert sidecar["source"]["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert sidecar["versions"]["opset"] == 17 and sidecar["versions"]["visionkit"] == visionkit.__version__
    assert sidecar["check"]["passed"] is True and sidecar["check"]["rows"][0]["max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["model.onnx", "model.onnx.json"]  # no temporaries


@pytest.mark.parametrize("fmt, flags", [("onnx", []), ("torchscript", ["--dynamic-batch", "--softmax"])])
def test_exported_predict_equals_checkpoint_predict(cls_run: Path, tmp_path: Path, fmt: str, flags: list) -> None:
    assert export_main([str(cls_run), "--format", fmt, "--out", str(tmp_path / "x"), *flags]) == 0
    images = _digit_pngs(tmp_path / "in")
    model_file = tmp_path / "x" / ("model.onnx" if fmt == "onnx" else "model.torchscript")
    exported = visionkit.predict(model_file, [images], tmp_path / "a", progress=False)
    reference = visionkit.predict(cls_run, [images], tmp_path / "b", progress=False)
    assert len(exported["predictions"]) == 6 and exported["data"] == reference["data"]
    for got, want in zip(exported["predictions"], reference["predictions"], strict=True):
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        assert np.allclose([t["score"] for t in got["top"]], [t["score"] for t in want["top"]], atol=2e-6)
    assert (tmp_path / "a" / "predictions.png").is_file()


def test_a_trace_that_differs_from_eager_fails_the_check(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    visionkit.train(
        None,
        [*TINY_CLS, "model={_delete_: true, name: test_branchy_net}", "trainer.max_steps=2", "trainer.progress=false"],
        task="cls",
        work_dir=run,
    )
    out = tmp_path / "x"
    assert export_main([str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "disagrees with PyTorch" in err and "FAIL" in err and "max |diff|" in err and "Traceback" not in err
    assert not list(out.iterdir())  # nothing that looks like a valid export is left behind
    with pytest.raises(ExportCheckError) as info:
        export_model(run, "torchscript", tmp_path / "ts")
    assert not info.value.rows[0].passed and not list((tmp_path / "ts").iterdir())
    assert export_main([str(run), "--out", str(out), "--no-check"]) == 0  # the user may skip it knowingly
    assert json.loads((out / "model.onnx.json").read_text())["check"] == {"passed": None, "skipped": True}


def test_segmentation_export_runs_any_image_size(tmp_path: Path) -> None:
    run = tmp_path / "run"
    visionkit.train(None, SEG_TINY, task="seg", work_dir=run)
    sidecar = export_model(run, "onnx", tmp_path / "x", dynamic_batch=True)
    assert sidecar["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert sidecar["outputs"][0]["shape"] == ["batch", 4, "height", "width"]
    rng = np.random.default_rng(0)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(32, 32), (45, 61), (33, 97)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "in" / "sub" / f"s{i}.png")
    exported = visionkit.predict(tmp_path / "x" / "model.onnx", [tmp_path / "in"], tmp_path / "a", progress=False)
    reference = visionkit.predict(run, [tmp_path / "in"], tmp_path / "b", progress=False)
    for got, want in zip(exported["predictions"], reference["predictions"], strict=True):
        assert got["masks"] == want["masks"] and got["class_pixels"] == want["class_pixels"]
        a, b = (np.array(Image.open(root / r["masks"])) for root, r in ((tmp_path / "a", got), (tmp_path / "b", want)))
        assert a.shape == (got["size"][1], got["size"][0]) and (a == b).all()


@pytest.mark.parametrize("config", [None, "configs/gen/dcgan.yaml"])
def test_generation_networks_export_and_predict_says_use_the_checkpoint(tmp_path: Path, config, capsys) -> None:
    tiny = ["data.image_size=8", "data.batch_size=16", "data.num_workers=0", "data.repeat=1", "model.width=8"]
    tiny += ["trainer.max_steps=2", "trainer.progress=false", "generation.eval_samples=8", "generation.grid_samples=4"]
    tiny += ["model.z_dim=8"] if config else ["model.mults=[1,2]", "generation.eval_steps=2", "model.conditional=true"]
    visionkit.train(config, tiny, task="gen", work_dir=tmp_path / "run")
    sidecar = export_model(tmp_path / "run", "onnx", tmp_path / "x", dynamic_batch=True)
    names = [i["name"] for i in sidecar["inputs"]]
    assert names == (["noise", "labels"] if config else ["images", "timesteps", "labels"])  # both conditional
    assert sidecar["check"]["passed"] and sidecar["check"]["inputs"] == "random inputs of the exported signature"
    from visionkit.cli import predict_main

    assert predict_main([str(tmp_path / "x" / "model.onnx"), "--out", str(tmp_path / "p")]) == 2
    assert "sampling runs in Python" in capsys.readouterr().err


def test_export_errors_are_clear(cls_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    assert export_main([str(tmp_path / "nothing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert export_main([str(cls_run), "--format", "torchscript", "--dynamo"]) == 2
    assert "--dynamo applies to ONNX" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the deploy extra were not installed
    assert export_main([str(cls_run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'visionkit[deploy]'" in err and "'onnx' package" in err
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    assert export_main([str(cls_run), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_predict_on_an_exported_file_without_its_sidecar(cls_run: Path, tmp_path: Path, capsys) -> None:
    from visionkit.cli import predict_main

    export_model(cls_run, "onnx", tmp_path / "x", check=False)
    (tmp_path / "x" / "model.onnx.json").unlink()
    assert predict_main([str(tmp_path / "x" / "model.onnx"), str(_digit_pngs(tmp_path / "in", 1))]) == 2
    assert "has no sidecar 'model.onnx.json'" in capsys.readouterr().err


def test_dynamo_exporter_matches_too(cls_run: Path, tmp_path: Path) -> None:
    sidecar = export_model(cls_run, "onnx", tmp_path / "x", dynamo=True, dynamic_batch=True)
    assert sidecar["versions"]["opset"] == 18 and sidecar["export"]["exporter"] == "torch.export (dynamo)"
    assert sidecar["check"]["passed"] is True


def test_missing_optional_libraries_name_the_extra(cls_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from visionkit.cli.deploy import explain_main

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # grad-cam not installed
    assert explain_main([str(cls_run), str(_digit_pngs(tmp_path / "in", 1)), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "'grad-cam' package" in err and "pip install 'visionkit[deploy]'" in err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert export_main([str(cls_run), "--out", str(tmp_path / "x")]) == 2
    assert "'onnxruntime' package" in capsys.readouterr().err


def test_an_export_at_another_size_predicts_at_that_size(cls_run: Path, tmp_path: Path, capsys) -> None:
    from visionkit.cli import predict_main

    sidecar = export_model(cls_run, "onnx", tmp_path / "x", image_size=16)
    assert sidecar["inputs"][0]["shape"] == [1, 1, 16, 16] and sidecar["data"]["image_size"] == 16
    result = visionkit.predict(tmp_path / "x" / "model.onnx", [_digit_pngs(tmp_path / "in", 2)], tmp_path / "o")
    assert len(result["predictions"]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.onnx").write_bytes((tmp_path / "x" / "model.onnx").read_bytes()[:100])  # truncated
    (tmp_path / "bad" / "model.onnx.json").write_text((tmp_path / "x" / "model.onnx.json").read_text())
    assert predict_main([str(tmp_path / "bad" / "model.onnx"), str(tmp_path / "in")]) == 2
    err = capsys.readouterr().err
    assert "could not be loaded as an ONNX model" in err and "Traceback" not in err


def test_profile_takes_overrides_for_a_task_and_refuses_them_for_a_checkpoint(cls_run: Path, tmp_path, capsys) -> None:
    from visionkit.cli.deploy import profile_main

    args = ["--batch", "1", "--iters", "2", "--no-compile", "--no-onnx", "--out", str(tmp_path)]
    assert profile_main(["--task", "cls", *TINY_CLS, *args]) == 0
    assert json.loads((tmp_path / "profile.json").read_text())["params"]["total"] < 10_000  # width 8, depth 2
    assert profile_main([str(cls_run), "model.width=16", *args]) == 2
    assert "profiled as it was trained" in capsys.readouterr().err
