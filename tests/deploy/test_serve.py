"""`visionkit serve` in process (FastAPI's TestClient): the records equal predict's, several files per request,
the drawing as PNG, micro-batching with per-request results, and bad uploads answered 4xx while the server goes
on (issue 22; the browser page and the load test follow)."""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionkit
from tests.conftest import ROOT, run_tool
from tests.tasks.detection.test_end_to_end import ENV, FCOS, TINY_DET, det_cache, val_files

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is in make test's dev")
from fastapi.testclient import TestClient  # noqa: E402

from visionkit.deploy.serve import Limits, build_app  # noqa: E402

__all__ = ["det_cache"]  # the module-scoped cache fixture the runs below share


@pytest.fixture(scope="module")
def det_run(tmp_path_factory, det_cache) -> Path:
    """A tiny FCOS trained for two steps (it finds boxes at score 0: enough to compare records)."""
    run = tmp_path_factory.mktemp("serve") / "fcos"
    proc = run_tool("train", "--task", "det", "--work-dir", str(run), *TINY_DET, *FCOS, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_info_health_and_the_drawing(det_run: Path, tmp_path: Path) -> None:
    client = TestClient(build_app(det_run, Limits(max_wait_ms=1)))
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["task"] == "detection" and info["classes"] == ["circle", "square", "triangle", "cross"]
    assert "visionkit serve" in client.get("/").text
    _, images = val_files()
    names = ["000000.png", "000001.png"]
    files = [("files", (n, (images / n).read_bytes(), "image/png")) for n in names]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    expected = visionkit.predict(det_run, [images / n for n in names], tmp_path / "p", progress=False)["predictions"]
    assert [r["input"] for r in served] == names
    for got, want in zip(served, expected, strict=True):
        assert (got["width"], got["height"]) == (want["width"], want["height"])
        assert len(got["detections"]) == len(want["detections"])
        for a, b in zip(got["detections"], want["detections"], strict=True):
            assert a["class"] == b["class"] and abs(a["score"] - b["score"]) < 1e-3
    raw = client.post("/predict", content=(images / names[0]).read_bytes())
    assert raw.status_code == 200 and len(raw.json()["predictions"]) == 1
    drawn = client.post("/predict?draw=1", files=files[:1])
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    assert min(Image.open(io.BytesIO(drawn.content)).size) >= 512


def test_bad_uploads_get_4xx_json_and_the_server_goes_on(det_run: Path) -> None:
    client = TestClient(build_app(det_run, Limits(max_bytes=20_000, max_pixels=200_000, max_wait_ms=1)))
    bomb = io.BytesIO()
    Image.new("1", (2000, 2000)).save(bomb, format="PNG")  # 4 M pixels in a few hundred bytes
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)  # ~43 KB as PNG
    cases = {
        "empty": (b"", 400, "is empty"),
        "text": (b"hello, not an image", 415, "could not be decoded"),
        "truncated": (_png(noise)[:5000], 415, "could not be decoded"),
        "big": (_png(noise), 413, "the limit is 20,000 bytes"),
        "bomb": (bomb.getvalue(), 413, "pixels; the limit is 200,000"),
    }
    for name, (data, status, words) in cases.items():
        answer = client.post("/predict", files=[("files", (name, data, "application/octet-stream"))])
        assert answer.status_code == status and words in answer.json()["error"], (name, answer.text)
    no_file = client.post("/predict", files=[("note", (None, b"a text field, no file"))])
    assert no_file.status_code == 400 and "holds no file" in no_file.json()["error"]
    good = client.post("/predict", files=[("files", ("ok.png", _png(noise[:40, :40]), "image/png"))])
    assert good.status_code == 200 and client.get("/health").status_code == 200


def test_concurrent_requests_share_batches_and_get_their_own_records(det_run: Path) -> None:
    app = build_app(det_run, Limits(max_batch=8, max_wait_ms=200))
    client = TestClient(app)
    _, images = val_files()
    files = sorted(images.glob("*.png"))[:6]

    def post(path: Path) -> dict:
        answer = client.post("/predict", files=[("files", (path.name, path.read_bytes(), "image/png"))])
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"][0]

    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(post, files))
    assert max(app.state.batcher.batches) > 1  # requests ran together
    alone = [post(p) for p in files]
    assert [r["input"] for r in together] == [p.name for p in files]
    assert json.dumps([len(r["detections"]) for r in together]) == json.dumps([len(r["detections"]) for r in alone])


def test_serve_command_help_and_a_missing_model() -> None:
    helped = run_tool("serve", "--help")
    assert helped.returncode == 0 and "--host" in helped.stdout and "127.0.0.1" in helped.stdout
    missing = run_tool("serve", "nowhere.pt")
    assert missing.returncode == 2 and "nowhere.pt" in missing.stderr and "Traceback" not in missing.stderr


def _load_script():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    return load


def test_two_worker_processes_serve_on_a_loopback_port(det_run: Path) -> None:
    """`--workers 2`: the command starts two server processes, each with its model, and both answer."""
    load = _load_script()
    server, port = load.start_server(str(det_run), 8, ENV, ["--workers", "2"])
    _, images = val_files()
    body = (images / "000000.png").read_bytes()

    def post(_: int) -> tuple[int, int]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # a new connection each time
        connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
        answer = connection.getresponse()
        width = json.loads(answer.read())["predictions"][0]["width"] if answer.status == 200 else -1
        connection.request("GET", "/info")
        return width, json.loads(connection.getresponse().read())["process"]

    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(post, range(24)))
        children = {int(pid) for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()}
        workers = {pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()}
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert [width for width, _ in answers] == [48] * 24  # every request answered
    assert len(workers) == 2, children  # two worker processes under the command
    assert {pid for _, pid in answers} <= workers  # answered by the workers, not the supervising process
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)  # and they stop with it


def test_a_bounded_load_with_bad_uploads_fails_no_good_request(det_run: Path) -> None:
    load = _load_script()
    image = load.png(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    row = load.run_load(str(det_run), 8, requests=120, clients=4, image=image, faults=True, env=ENV)
    assert row["failed_good"] == 0, row["failures"]
    assert row["bad_refused"] > 0 and row["bad_wrong"] == [], row
    assert row["p99_ms"] >= row["p50_ms"] > 0 and row["requests_per_s"] > 0
