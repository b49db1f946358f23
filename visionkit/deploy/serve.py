"""`visionkit serve`: a trained model (checkpoint, run folder or exported ONNX) behind HTTP, on FastAPI.

POST /predict takes one or more images (multipart `files`, or the raw body) and answers the records
`predictions.json` holds, one per image, or with `?draw=1` the PNG drawing of the first one. GET /health and
GET /info describe the server. Requests that arrive within `max_wait_ms` of each other run as one batch of at
most `max_batch` images (micro-batching); each request gets its own records. Uploads are checked before any
decoding work: size (`max_bytes`), image format, pixel count (`max_pixels`, which also stops decompression
bombs) and channels; a bad one is a 4xx JSON error naming the problem, and never stops the server. No
endpoint reads or writes a file named by the client.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionkit.deploy.page import PAGE
from visionkit.deploy.runtime import is_exported, load_exported
from visionkit.engine.contracts import Task
from visionkit.engine.inference import load_model
from visionkit.engine.predictor import Predictor, check_options
from visionkit.errors import ConfigError, require
from visionkit.plugins import import_plugin
from visionkit.version import __version__

MAX_BYTES = 10 * 1024 * 1024  # per upload
MAX_PIXELS = 40_000_000  # per image, checked from the header before decoding
MAX_BATCH, MAX_WAIT_MS = 8, 5.0
SETTINGS = "VISIONKIT_SERVE"  # JSON settings for `--workers K` processes (see app_from_environment)


class BadUpload(Exception):
    """An upload refused with an HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    """What the server accepts."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS


def decode_upload(data: bytes, name: str, limits: Limits, channels: int | None) -> np.ndarray:
    """An uploaded file as the HWC uint8 image the task reads from disk; BadUpload for anything else."""
    if not data:
        raise BadUpload(400, f"'{name}' is empty; send an image file (PNG, JPEG, ...).")
    if len(data) > limits.max_bytes:
        raise BadUpload(413, f"'{name}' is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes.")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
            if width * height > limits.max_pixels:
                raise BadUpload(
                    413,
                    f"'{name}' is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}.",
                )
            probe.load()
            image = probe.copy()
    except BadUpload:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadUpload(413, f"'{name}' decodes to too many pixels ({exc}).") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's bad file
        raise BadUpload(415, f"'{name}' could not be decoded as an image ({type(exc).__name__}: {exc}).") from None
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK", "YCbCr"):
        raise BadUpload(422, f"'{name}' has pixel mode {image.mode!r}, which has no RGB or grey reading.")
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[:, :, None] if array.ndim == 2 else array


def load_for_serving(source: str | Path, device: str | None = None) -> tuple[Any, Any, str]:
    """(task, model, model file) of a checkpoint, run folder or exported model."""

    if is_exported(source):
        task, model, path = load_exported(source)
        return task, model, str(path)
    task, model, _ = load_model(source, device=device)
    return task, model, str(source)


@dataclass
class Job:
    """One request's images and where its records go."""

    images: list[np.ndarray]
    draw: bool
    notify: Callable[[], None] | None = None  # called (from the batcher's thread) once the result is in
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Batcher:
    """Runs queued jobs in batches of up to `max_batch` images, waiting at most `max_wait_ms` for company."""

    def __init__(self, predictor: Any, options: dict[str, Any], limits: Limits) -> None:
        self.predictor, self.options, self.limits = predictor, options, limits
        self.queue: list[Job] = []
        self.lock = threading.Condition()
        self.batches: list[int] = []  # images per batch run (for /info and the load test)
        self.thread = threading.Thread(target=self._loop, daemon=True, name="visionkit-batcher")
        self.thread.start()

    def enqueue(self, job: Job) -> None:
        """Queue a job; its `done` event is set (and `notify` called) when its result is in."""
        with self.lock:
            self.queue.append(job)
            self.lock.notify()

    def submit(self, job: Job) -> Job:
        """Queue a job and wait for its result (from any thread but the batcher's)."""
        self.enqueue(job)
        job.done.wait()
        return job

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.queue:
                    self.lock.wait()
                deadline = time.perf_counter() + self.limits.max_wait_ms / 1000
                while sum(len(j.images) for j in self.queue) < self.limits.max_batch:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self.lock.wait(left)
                jobs, size = [], 0
                while self.queue and (not jobs or size + len(self.queue[0].images) <= self.limits.max_batch):
                    job = self.queue.pop(0)
                    jobs.append(job)
                    size += len(job.images)
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        try:
            images = [image for job in jobs for image in job.images]
            self.batches.append(len(images))
            outputs = self.predictor.predict_frames(images, self.options)
            at = 0
            for job in jobs:
                mine = outputs[at : at + len(job.images)]
                job.result = [self._record(img, out, job.draw) for img, out in zip(job.images, mine, strict=True)]
                at += len(job.images)
        except BaseException as exc:  # noqa: BLE001 - each request gets the error; the loop goes on
            for job in jobs:
                job.error = exc
        finally:
            for job in jobs:
                job.done.set()
                if job.notify is not None:
                    job.notify()

    def _record(self, image: np.ndarray, output: Any, draw: bool) -> tuple[dict[str, Any], bytes | None]:
        task, opts = self.predictor.task, self.options
        record = task.postprocess(output, image, opts)
        picture = None
        if draw:
            pictures = task.draw(image, output, {**opts, "draw": True}) or {}
            if pictures:
                first = next(iter(pictures.values()))
                im = first if isinstance(first, Image.Image) else Image.fromarray(np.asarray(first, np.uint8))
                buffer = io.BytesIO()
                im.save(buffer, format="PNG")
                picture = buffer.getvalue()
        return record, picture


def build_app(source: str | Path, limits: Limits | None = None, device: str | None = None) -> Any:
    """The FastAPI application serving `source` (checkpoint, run folder or model.onnx)."""
    fastapi = require("fastapi", "visionkit serve")
    require("multipart", "visionkit serve")  # python-multipart: FastAPI's form parser
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    limits = limits or Limits()
    task, model, model_file = load_for_serving(source, device)
    if type(task).postprocess is Task.postprocess:
        raise ConfigError(f"Task '{task.name}' does not implement prediction on images; it cannot be served yet.")
    batcher = Batcher(Predictor(task, model), check_options(task, {}), limits)
    app = fastapi.FastAPI(title="visionkit", version=__version__)
    info = {
        "task": task.name,
        "classes": list(task.facts.class_names or []),
        "image_size": task.facts.image_size,
        "channels": task.facts.channels,
        "model_file": Path(model_file).name,
        "visionkit_version": __version__,
        "limits": {
            "max_bytes": limits.max_bytes,
            "max_pixels": limits.max_pixels,
            "max_batch": limits.max_batch,
            "max_wait_ms": limits.max_wait_ms,
        },  # fmt: skip
    }

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def describe() -> dict[str, Any]:
        return {**info, "batches_run": len(batcher.batches)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    async def predict(request: Any, draw: int = 0) -> Any:
        try:
            uploads = await _uploads(request, limits)
            images = [decode_upload(data, name, limits, task.facts.channels) for name, data in uploads]
        except BadUpload as exc:
            return error(exc.status, str(exc))
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()  # resolved from the batcher's thread: no worker thread waits per request
        job = Job(images, bool(draw), notify=lambda: loop.call_soon_threadsafe(waiter.set_result, None))
        batcher.enqueue(job)
        await waiter
        if job.error is not None:
            return error(500, f"prediction failed: {type(job.error).__name__}: {job.error}")
        if draw:
            picture = job.result[0][1]
            if picture is None:
                return error(400, f"task '{task.name}' draws nothing for a prediction.")
            return Response(picture, media_type="image/png")
        names = [name for name, _ in uploads]
        return {"predictions": [{"input": n, **r} for n, (r, _) in zip(names, job.result, strict=True)]}

    predict.__annotations__.update(request=fastapi.Request, draw=int)  # resolved here: fastapi is imported lazily
    app.post("/predict")(predict)
    app.state.batcher, app.state.info = batcher, info
    return app


async def _uploads(request: Any, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of every uploaded file: multipart form files, or the raw body as one image."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > limits.max_bytes * limits.max_batch:
        raise BadUpload(
            413, f"the request is {declared:,} bytes; the limit is {limits.max_bytes * limits.max_batch:,}."
        )
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        files = [
            (getattr(v, "filename", None) or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")
        ]
        if not files:
            raise BadUpload(400, "the form holds no file; send images as multipart fields named 'files'.")
        if len(files) > limits.max_batch:
            raise BadUpload(413, f"{len(files)} files in one request; the limit is {limits.max_batch}.")
        return files
    body = await request.body()
    return [("body", body)]


def app_from_environment() -> Any:
    """The app of one `--workers K` process, built from the settings `visionkit serve` put in VISIONKIT_SERVE."""
    import json
    import os

    settings = json.loads(os.environ[SETTINGS])
    for spec in settings.get("plugins") or []:
        import_plugin(spec)
    return build_app(settings["model"], Limits(**settings["limits"]), settings.get("device"))
