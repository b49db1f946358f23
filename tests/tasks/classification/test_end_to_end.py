"""Classification end to end: train -> eval -> predict through tools/ and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

import visionkit
from tests.conftest import TINY_CLS, merged, run_tool


def _digit_pngs(folder: Path, count: int = 12) -> list[int]:
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for i in range(count):
        index = 1700 + i
        Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8), "L").save(folder / f"{i:02d}.png")
        labels.append(int(digits.target[index]))
    return labels


def test_tools_train_eval_predict(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = merged(*TINY_CLS, "trainer.epochs=3", "model.width=16")
    proc = run_tool("train", "--task", "cls", "--work-dir", str(run), *overrides)
    assert proc.returncode == 0, proc.stderr
    assert "val/top1" in proc.stdout
    best = run / "checkpoints" / "best.pt"
    proc = run_tool("eval", str(best), "--out", str(tmp_path / "metrics.json"))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert abs(metrics["val/top1"] - summary["best"]["val/top1"]) < 1e-9  # eval reproduces the best val score
    labels = _digit_pngs(tmp_path / "images")
    proc = run_tool(
        "predict", str(best), str(tmp_path / "images"), "--out", str(tmp_path / "pred"), "--option", "topk=3"
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert written["task"] == "classification" and written["data"]["class_names"] == [str(d) for d in range(10)]
    preds = written["predictions"]
    assert len(preds) == 12 and all(len(p["top"]) == 3 for p in preds)
    assert [Path(p["input"]).name for p in preds] == [f"{i:02d}.png" for i in range(12)]
    hits = sum(p["top"][0]["label"] == y for p, y in zip(preds, labels))
    assert hits >= 6, preds  # a 3-epoch tiny model already gets most digits right
    assert (tmp_path / "pred" / "predictions.png").stat().st_size > 1000
    proc = run_tool("predict", str(best), str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_python_api_train_evaluate_predict(tmp_path: Path) -> None:
    result = visionkit.train("configs/cls/default.yaml", merged(*TINY_CLS, "trainer.epochs=2"), work_dir=tmp_path / "r")
    assert result.run_dir == tmp_path / "r" and result.best_checkpoint.is_file()
    metrics = visionkit.evaluate(result.best_checkpoint)
    assert abs(metrics["val/top1"] - result.best["val/top1"]) < 1e-9
    _digit_pngs(tmp_path / "imgs", 4)
    out = visionkit.predict(result.best_checkpoint, [tmp_path / "imgs"], tmp_path / "p", topk=2)
    assert len(out["predictions"]) == 4 and len(out["predictions"][0]["top"]) == 2
    assert out["grid"] == str(tmp_path / "p" / "predictions.png") and Path(out["grid"]).is_file()
    assert out["json"] == str(tmp_path / "p" / "predictions.json")
    assert abs(sum(t["score"] for t in out["predictions"][0]["top"])) <= 1.0 + 1e-6
