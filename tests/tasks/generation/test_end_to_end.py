"""Generation end to end: train -> sample/inpaint through tools/ and the Python API, with a classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import visionkit
from tests.conftest import ROOT, TINY_CLS, merged, run_tool
from visionkit.errors import ConfigError
from visionkit.tasks.generation.features import CheckpointClassifier

# A diffusion run that takes a few seconds: 8x8 digits, a narrow U-Net, 3 updates, 2-step sampling.
TINY_GEN = [
    "data.image_size=8",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.repeat=1",
    "model.width=8",
    "model.mults=[1,2]",
    "trainer.max_steps=3",
    "trainer.log_every=1",
    "trainer.progress=false",
    "generation.eval_samples=8",
    "generation.eval_steps=2",
    "generation.steps=2",
    "generation.grid_samples=10",
]
TINY_GAN = [
    "data.image_size=8",
    "data.batch_size=16",
    "data.num_workers=0",
    "data.repeat=1",
    "model.width=8",
    "model.z_dim=8",
    "trainer.max_steps=3",
    "trainer.log_every=1",
    "trainer.progress=false",
    "generation.eval_samples=8",
    "generation.grid_samples=10",
]
DCGAN = ROOT / "configs" / "gen" / "dcgan.yaml"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _digit_pngs(folder: Path, count: int) -> list[Path]:
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"digit{i}.png"
        Image.fromarray((digits.images[1700 + i] * 255 / 16).astype(np.uint8), "L").save(path)
        paths.append(path)
    return paths


def test_tools_train_and_sample_then_inpaint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_tool(
        "train",
        "--task",
        "gen",
        "--work-dir",
        str(run),
        *TINY_GEN,
        "model.conditional=true",
        "generation.guidance=2.0",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr
    assert "val/fd" in proc.stdout
    assert (run / "samples" / "epoch_000.png").is_file()  # max_steps stops inside epoch 0
    grid = Image.open(run / "samples" / "epoch_000.png")
    assert grid.size[1] > 9 * grid.size[0]  # conditional: one row per class (10 rows of 1 image here)
    best = run / "checkpoints" / "best.pt"
    out = tmp_path / "samples"
    proc = run_tool(
        "predict",
        str(best),
        "--out",
        str(out),
        "--option",
        "num_samples=6",
        "--option",
        "labels=[3, 7]",
        "--option",
        "seed=5",
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "predictions.json").read_text())
    assert result["task"] == "generation" and result["grid"] == "grid.png"
    assert [p["label"] for p in result["predictions"]] == [3, 7, 3, 7, 3, 7]
    assert len(list((out / "samples").glob("*.png"))) == 6 and (out / "grid.png").is_file()
    assert Image.open(out / "samples" / "sample_00000.png").size == (8, 8)
    images = _digit_pngs(tmp_path / "inputs", 3)
    out = tmp_path / "inpaint"
    info = visionkit.predict(best, [tmp_path / "inputs"], out_dir=out, mask="top", resample=2)
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["predictions"] == info["predictions"] and saved["task"] == "generation"
    assert info["options"]["mask"] == "top" and info["grid"] == str(out / "inpaint_grid.png")
    assert [Path(p["input"]).name for p in info["predictions"]] == [p.name for p in images]
    assert [p["masked_fraction"] for p in info["predictions"]] == [0.5, 0.5, 0.5]
    assert [p["label"] for p in info["predictions"]] == [0, 1, 2]  # conditional: labels cycle over the classes
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(tmp_path / "right.png")  # a mask image: fill the right half
    right = visionkit.predict(best, [images[0]], out_dir=tmp_path / "right", mask=str(tmp_path / "right.png"))
    for folder, result in ((out, info), (tmp_path / "right", right)):
        for p in result["predictions"]:
            assert (folder / p["masked"]).is_file() and p["inpaint"] == f"inpaint/{Path(p['input']).stem}.png"
            filled = np.asarray(Image.open(folder / p["inpaint"]), np.int16)
            original = np.asarray(Image.open(p["input"]).resize((8, 8), Image.Resampling.BOX), np.int16)
            keep = (slice(None), slice(0, 4)) if folder.name == "right" else (slice(4, 8),)  # columns 0-3 / rows 4-7
            assert np.abs(filled[keep] - original[keep]).max() <= 1  # the known region is the input (up to rounding)
    assert right["predictions"][0]["masked_fraction"] == 0.5
    assert (out / "inpaint_grid.png").is_file()
    # A `<name>_mask` file beside an image is that image's mask (right half) and is not an input itself.
    Image.fromarray(mask).save(tmp_path / "inputs" / f"{images[0].stem}_mask.png")
    named = visionkit.predict(best, [tmp_path / "inputs"], out_dir=tmp_path / "named", mask="top", steps=1)
    assert [Path(p["input"]).name for p in named["predictions"]] == [p.name for p in images]
    assert [p["masked_fraction"] for p in named["predictions"]] == [0.5, 0.5, 0.5]
    masked = np.asarray(Image.open(tmp_path / "named" / named["predictions"][0]["masked"]).convert("L"))
    assert masked[:, 4:].max() == 0 and masked[:4, :4].max() > 0  # its own mask hid the right half, not the top


def test_python_api_gan_train_and_seeded_predict(tmp_path: Path) -> None:
    result = visionkit.train(DCGAN, TINY_GAN, work_dir=tmp_path / "gan")
    assert result.metrics["val/fd"] > 0 and result.best_checkpoint.is_file()
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/discriminator/loss" in r]
    assert len(train) == 3 and all(np.isfinite(r["train/discriminator/loss"]) for r in train)
    assert all(np.isfinite(r["train/generator/loss"]) and r["train/r1"] > 0 for r in train)  # dcgan.yaml: R1 on
    metrics = visionkit.evaluate(result.best_checkpoint)  # the EMA generator on fixed noise: reproducible
    assert metrics["val/generated"] == 8 and metrics["val/fd"] == pytest.approx(result.best["val/fd"], rel=1e-9)
    first = visionkit.predict(result.best_checkpoint, out_dir=tmp_path / "a", num_samples=4, seed=1)
    again = visionkit.predict(result.best_checkpoint, out_dir=tmp_path / "b", num_samples=4, seed=1)
    other = visionkit.predict(result.best_checkpoint, out_dir=tmp_path / "c", num_samples=4, seed=2)
    folders = (tmp_path / "a", tmp_path / "b", tmp_path / "c")
    pixels = [
        [np.asarray(Image.open(folder / p["samples"])) for p in r["predictions"]]
        for folder, r in zip(folders, (first, again, other), strict=True)
    ]
    assert all(np.array_equal(x, y) for x, y in zip(pixels[0], pixels[1], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(pixels[0], pixels[2], strict=True))
    with pytest.raises(ConfigError, match="diffusion"):
        visionkit.predict(result.best_checkpoint, _digit_pngs(tmp_path / "in", 1), out_dir=tmp_path / "d")
    with pytest.raises(ConfigError, match="sampler"):  # diffusion-only options are unknown to a GAN
        visionkit.predict(result.best_checkpoint, out_dir=tmp_path / "f", sampler="ddim")
    with pytest.raises(ConfigError, match="num_sample"):
        visionkit.predict(result.best_checkpoint, out_dir=tmp_path / "e", num_sample=4)


def test_classifier_scores_and_classifier_features(tmp_path: Path) -> None:
    cls = visionkit.train(None, merged(*TINY_CLS, "model.width=8"), task="cls", work_dir=tmp_path / "cls")
    ckpt = str(cls.best_checkpoint)
    result = visionkit.train(
        None,
        [*TINY_GEN, "model.conditional=true", f"generation.classifier={ckpt}", f"generation.feature_net={ckpt}"],
        task="gen",
        work_dir=tmp_path / "gen",
    )
    m = result.metrics
    assert m["val/generated"] == 8 and m["val/fd"] >= 0
    assert 0.1 <= m["val/classifier_confidence"] <= 1 and 1 <= m["val/classes_covered"] <= 10
    assert 0 <= m["val/class_consistency"] <= 1
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["generation"]["classifier"] == ckpt and summary["generation"]["sampler"] == "ddpm"
    # the classifier's facts come from the checkpoint's facts, or from the config of an older checkpoint
    judge = CheckpointClassifier(ckpt)
    assert judge.class_names == [str(i) for i in range(10)] and judge.num_classes == 10 and judge.in_chans == 1
    old = torch.load(ckpt, map_location="cpu", weights_only=False)
    facts = old.pop("facts")
    old["config"]["data"].update({k: facts[k] for k in ("class_names", "num_classes", "channels", "image_size")})
    torch.save(old, tmp_path / "old.pt")
    before = CheckpointClassifier(tmp_path / "old.pt")
    assert (before.class_names, before.num_classes, before.in_chans) == (judge.class_names, 10, 1)
    assert before.size == judge.size
