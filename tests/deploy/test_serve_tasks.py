"""`visionkit serve` for the other tasks (issue 22): segmentation and instance records equal predict's, the
generation task's samples over POST /sample equal predict's for the same seed, and an endpoint the task has no
use for answers 404 naming the right one."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionkit

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is in make test's dev")
from fastapi.testclient import TestClient  # noqa: E402

from visionkit.deploy.serve import Limits, build_app  # noqa: E402


def _pngs(folder: Path, size: int, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    paths = []
    for k in range(count):
        path = folder / f"image{k}.png"
        Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _served(run: Path, paths: list[Path], **options: object) -> tuple[TestClient, list[dict]]:
    client = TestClient(build_app(run, Limits(max_wait_ms=1), options=options))
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    return client, answer.json()["predictions"]


def test_segmentation_records_equal_predict(seg_run: Path, tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "in", 32, 2)
    client, served = _served(seg_run, paths)
    expected = visionkit.predict(seg_run, paths, tmp_path / "out", progress=False)["predictions"]
    assert [r["input"] for r in served] == [p.name for p in paths]
    for got, want in zip(served, expected, strict=True):
        assert got["class_pixels"] == want["class_pixels"] and sum(got["class_pixels"].values()) == 32 * 40
    assert client.get("/info").json()["predicts"] is True
    drawn = client.post("/predict?draw=1", content=paths[0].read_bytes())  # the overlay, scaled up, legend below
    overlay = Image.open(io.BytesIO(drawn.content))
    assert drawn.status_code == 200 and overlay.format == "PNG" and overlay.width >= 512
    masks = Image.open(io.BytesIO(client.post("/predict?draw=1&picture=masks", content=paths[0].read_bytes()).content))
    assert masks.size == (40, 32) and masks.mode == "P"  # the class-index PNG at the image's own size
    unknown = client.post("/predict?draw=1&picture=heatmap", content=paths[0].read_bytes())
    assert unknown.status_code == 400 and "masks, overlays" in unknown.json()["error"]
    refused = client.post("/sample")
    assert refused.status_code == 404 and "/predict" in refused.json()["error"]


def test_uploads_are_read_as_predict_reads_files(seg_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    photo = tmp_path / "in" / "phone.jpg"  # stored 40 wide, 24 high, displayed turned (EXIF orientation 6)
    photo.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(photo, exif=exif.tobytes())
    deep = tmp_path / "in" / "deep.png"  # 16-bit grey: scaled by its bit depth, as on disk
    Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(deep)
    client, served = _served(seg_run, [photo, deep])
    expected = visionkit.predict(seg_run, [photo, deep], tmp_path / "out", progress=False)["predictions"]
    assert served[0]["size"] == [24, 40] == expected[0]["size"]  # upright: the displayed width and height
    for got, want in zip(served, expected, strict=True):
        assert got["class_pixels"] == want["class_pixels"]


def test_instance_records_equal_predict_masks_included(inst_run: Path, tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "in", 48, 2)
    _, served = _served(inst_run, paths, score_threshold=0.0)  # the server's `--option`: every box of two updates
    expected = visionkit.predict(inst_run, paths, tmp_path / "out", progress=False, score_threshold=0.0)["predictions"]
    for got, want in zip(served, expected, strict=True):
        assert len(got["detections"]) == len(want["detections"]) > 0
        for a, b in zip(got["detections"], want["detections"], strict=True):
            assert a["class"] == b["class"] and abs(a["score"] - b["score"]) < 1e-4
            assert a["segmentation"]["counts"] == b["segmentation"]["counts"]  # the same RLE mask


def test_generation_samples_over_http_equal_predict(
    gen_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(build_app(gen_run, Limits(max_samples=8)))
    info = client.get("/info").json()
    assert info["samples"] is True and info["limits"]["max_samples"] == 8
    answer = client.post("/sample?num_samples=4&seed=3&labels=[1,2]")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = visionkit.predict(gen_run, [], tmp_path / "out", num_samples=4, seed=3, labels=[1, 2], progress=False)
    assert [p["label"] for p in body["predictions"]] == [1, 2, 1, 2]
    for got, want in zip(body["predictions"], expected["predictions"], strict=True):
        picture = Image.open(io.BytesIO(base64.b64decode(got["png"])))
        assert np.array_equal(np.asarray(picture), np.asarray(Image.open(tmp_path / "out" / want["samples"])))
    grid = client.post("/sample?num_samples=4&seed=3&labels=[1,2]&draw=1")
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert grid.content == (tmp_path / "out" / expected["grid"]).read_bytes()
    cases = {
        "num_samples=0": (422, "from 1 to 8"),
        "num_samples=9": (422, "from 1 to 8"),
        "colour=red": (400, "'colour' is not a sample option"),
        "labels=99": (422, "labels must be class indices"),
        f'nrow="{tmp_path / "out" / expected["grid"]}"': (400, "not a plain word"),  # a path: never read
        'nrow=[1,".."]': (400, "not a plain word"),
        "nrow=afile": (400, "naming no file"),  # a word, but a file's name in the server's folder
    }
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_bytes(b"")
    for query, (status, words) in cases.items():
        refused = client.post(f"/sample?{query}")
        assert refused.status_code == status and words in refused.json()["error"], (query, refused.text)
    assert client.get("/health").json() == {"status": "ok"}
    inpainted = client.post("/predict", content=_pngs(tmp_path / "in", 20, 1)[0].read_bytes())  # the `mask` option
    assert inpainted.status_code == 200, inpainted.text
    assert 0 < inpainted.json()["predictions"][0]["masked_fraction"] < 1
    pinned = TestClient(build_app(gen_run, Limits(max_samples=8), options={"seed": 5}))  # `--option seed=5`
    refused = pinned.post("/sample?num_samples=2&seed=1")
    assert refused.status_code == 400 and "fixed by this server at 5" in refused.json()["error"]
    kept = pinned.post("/sample?num_samples=2").json()["options"]
    assert kept["seed"] == 5
