"""`visionkit serve` when things go wrong: one bad image fails only its own request, a full queue answers 503,
the batcher outlives every job, server-side failures keep their details in the log, chunked uploads are capped
as declared ones are, Pillow opens only image formats, and FastAPI's own refusals keep the {"error"} shape."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is in make test's dev")
from fastapi.testclient import TestClient  # noqa: E402

from visionkit.deploy.batcher import Batcher, Busy, Job  # noqa: E402
from visionkit.deploy.serve import Limits, build_app  # noqa: E402


class _Task:
    """A stand-in task: the record is the image's mean."""

    def postprocess(self, output: Any, image: np.ndarray, options: dict) -> dict:
        return {"mean": float(output)}

    def draw(self, image: np.ndarray, output: Any, options: dict) -> dict:
        return {"image": image}


class _Predictor:
    """Fails a whole batch when any image in it is all 255 (as a model fails on one odd input); can be held."""

    def __init__(self) -> None:
        self.task, self.gate, self.sizes = _Task(), threading.Event(), []
        self.gate.set()

    def predict_frames(self, images: list[np.ndarray], options: dict) -> list[float]:
        self.gate.wait(10)
        self.sizes.append(len(images))
        if any(image.min() == 255 for image in images):
            raise ValueError("an image this model cannot take")
        return [image.mean() for image in images]


def _job(value: int) -> Job:
    return Job([np.full((4, 4, 3), value, np.uint8)], draw=False)


def test_one_bad_image_fails_only_its_own_request() -> None:
    predictor = _Predictor()
    predictor.gate.clear()  # hold the thread so the three jobs queue up and run as one batch
    batcher = Batcher(predictor, {}, Limits(max_batch=8, max_wait_ms=200))
    jobs = [_job(10), _job(255), _job(30)]
    for job in jobs:
        batcher.enqueue(job)
    predictor.gate.set()
    for job in jobs:
        assert job.done.wait(10)
    assert [j.result[0][0]["mean"] for j in (jobs[0], jobs[2])] == [10.0, 30.0]
    assert isinstance(jobs[1].error, ValueError) and jobs[0].error is None and jobs[2].error is None
    assert predictor.sizes[0] == 3  # they did run together first
    failing = Job([], draw=False, call=lambda: 1 / 0)  # a /sample call that fails: the thread goes on
    assert isinstance(batcher.submit(failing).error, ZeroDivisionError)
    assert batcher.submit(_job(7)).result[0][0]["mean"] == 7.0 and batcher.alive()
    batcher.stop()
    batcher.thread.join(5)
    assert not batcher.thread.is_alive() and batcher.predictor is None  # it let go of the model


def test_a_full_queue_refuses_with_busy() -> None:
    predictor = _Predictor()
    predictor.gate.clear()
    batcher = Batcher(predictor, {}, Limits(max_batch=1, max_wait_ms=0, max_queue=2))
    first = _job(1)
    batcher.enqueue(first)  # taken by the thread, which then waits at the gate
    deadline = time.monotonic() + 10
    while batcher.queue and time.monotonic() < deadline:
        time.sleep(0.001)
    batcher.enqueue(_job(2))
    batcher.enqueue(_job(3))
    with pytest.raises(Busy, match="2 requests are waiting"):
        batcher.enqueue(_job(4))
    predictor.gate.set()
    assert first.done.wait(10)


def _png(array: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def test_the_server_refuses_what_it_should_and_hides_its_internals(seg_run: Path) -> None:
    client = TestClient(build_app(seg_run, Limits(max_wait_ms=1, max_bytes=20_000, max_batch=2)))
    good = _png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    chunked = client.post("/predict", content=iter([good[:100], good[100:]]))  # no Content-Length: streamed
    assert chunked.status_code == 200, chunked.text
    flood = client.post("/predict", content=iter([b"\0" * 10_000] * 10))
    assert flood.status_code == 413 and "over" in flood.json()["error"]
    pcx = client.post("/predict", content=_png(np.zeros((8, 8, 3), np.uint8), "PCX"))  # Pillow reads it; we do not
    assert pcx.status_code == 415 and "PNG, JPEG" in pcx.json()["error"]
    text = client.post("/predict", content=b"GIF89a but no more")
    assert text.status_code == 415 and " at 0x" not in text.json()["error"]
    bad_query = client.post("/predict?draw=yes", content=good)
    assert bad_query.status_code == 422 and "query draw" in bad_query.json()["error"]
    assert "serve.py" not in bad_query.text and "'yes'" in bad_query.text  # no server source paths
    nowhere = client.get("/predictions")
    assert nowhere.status_code == 404 and "POST /predict" in nowhere.json()["error"]
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405 and "GET /predict" in wrong_method.json()["error"]
    batcher = client.app.state.batcher
    real = batcher.predictor.predict_frames

    def broken(images: list, options: dict) -> list:
        raise RuntimeError("a secret path on the server")

    batcher.predictor.predict_frames = broken
    failed = client.post("/predict", content=good)
    assert failed.status_code == 500 and "error 1" in failed.json()["error"]
    assert "secret" not in failed.text
    batcher.predictor.predict_frames = real
    assert client.post("/predict", content=good).status_code == 200
    assert client.get("/health").status_code == 200
    batcher.stop()
    batcher.thread.join(5)
    assert client.get("/health").status_code == 503
