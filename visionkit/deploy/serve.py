"""`visionkit serve`: a trained model (checkpoint, run folder or exported ONNX) behind HTTP, on FastAPI.

POST /predict takes one or more images (multipart `files`, or the raw body) and answers the records
`predictions.json` holds, one per image, or with `?draw=1` the PNG drawing of the first one. A task that
samples from nothing (generation) answers POST /sample: its samples as base64 PNGs, or with `?draw=1` their
grid. GET /health and GET /info describe the server. Requests that arrive within `max_wait_ms` of each other
run as one batch of at most `max_batch` images (micro-batching); each request gets its own records. Uploads
are checked before any decoding work (see uploads.py); a bad one is a 4xx JSON error naming the problem, and
never stops the server. No endpoint reads or writes a file named by the client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionkit.deploy.page import PAGE
from visionkit.deploy.runtime import is_exported, load_exported
from visionkit.deploy.uploads import BadUpload, Limits, decode_upload, read_uploads, sample_options
from visionkit.engine.contracts import Task
from visionkit.engine.inference import load_model
from visionkit.engine.predictor import Predictor, check_options, supports_predict
from visionkit.errors import ConfigError, require
from visionkit.plugins import import_plugin
from visionkit.version import __version__

SETTINGS = "VISIONKIT_SERVE"  # JSON settings for `--workers K` processes (see app_from_environment)


def load_for_serving(source: str | Path, device: str | None = None) -> tuple[Any, Any, str]:
    """(task, model, model file) of a checkpoint, run folder or exported model."""

    if is_exported(source):
        task, model, path = load_exported(source)
        return task, model, str(path)
    task, model, _ = load_model(source, device=device)
    return task, model, str(source)


@dataclass
class Job:
    """One request's images (or, for /sample, the call to make) and where its records go."""

    images: list[np.ndarray]
    draw: bool
    call: Callable[[], Any] | None = None  # run alone on the batcher's thread instead of predicting `images`
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
                jobs = self._take()
            if jobs[0].call is not None:
                self._call(jobs[0])
            else:
                self._run(jobs)

    def _take(self) -> list[Job]:
        """The next jobs to run (lock held): a /sample call alone, or requests of up to `max_batch` images."""
        while not self.queue:
            self.lock.wait()
        if self.queue[0].call is not None:
            return [self.queue.pop(0)]
        deadline = time.perf_counter() + self.limits.max_wait_ms / 1000
        while sum(len(j.images) for j in self.queue) < self.limits.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self.lock.wait(left)
        jobs, size = [], 0
        while self.queue and self.queue[0].call is None:
            if jobs and size + len(self.queue[0].images) > self.limits.max_batch:
                break
            jobs.append(self.queue.pop(0))
            size += len(jobs[-1].images)
        return jobs

    def _call(self, job: Job) -> None:
        try:
            job.result = job.call()
        except BaseException as exc:  # noqa: BLE001 - the request gets the error; the loop goes on
            job.error = exc
        finally:
            job.done.set()
            if job.notify is not None:
                job.notify()

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

    def _record(self, image: np.ndarray, output: Any, draw: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        task, opts = self.predictor.task, self.options
        record = task.postprocess(output, image, opts)
        pictures = (task.draw(image, output, {**opts, "draw": True}) or {}) if draw else {}
        return record, pictures


def png_bytes(picture: Any) -> bytes:
    """A drawing (PIL image or uint8 array) as PNG bytes."""
    im = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, np.uint8))
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()


def build_app(
    source: str | Path,
    limits: Limits | None = None,
    device: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """The FastAPI application serving `source` (checkpoint, run folder or model.onnx) with predict `options`."""
    fastapi = require("fastapi", "visionkit serve")
    require("python_multipart", "visionkit serve")  # python-multipart: FastAPI's form parser
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    limits = limits or Limits()
    task, model, model_file = load_for_serving(source, device)
    if not supports_predict(task):
        raise ConfigError(
            f"Task '{task.name}' implements neither prediction on images (`postprocess`) nor sampling (`sample`); "
            "it cannot be served. See docs/plugins.md, 'Write a new task'."
        )
    predictor = Predictor(task, model)
    chosen = check_options(task, options or {})  # the server's predict options (`--option`), checked once
    batcher = Batcher(predictor, chosen, limits)
    app = fastapi.FastAPI(title="visionkit", version=__version__)
    info = {
        "task": task.name,
        "classes": list(task.facts.class_names or []),
        "image_size": task.facts.image_size,
        "channels": task.facts.channels,
        "model_file": Path(model_file).name,
        "visionkit_version": __version__,
        "predicts": type(task).postprocess is not Task.postprocess,  # POST /predict
        "samples": type(task).sample is not Task.sample,  # POST /sample
        "limits": asdict(limits),
    }

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status)

    async def run(job: Job) -> Job:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()  # resolved from the batcher's thread: no worker thread waits per request
        job.notify = lambda: loop.call_soon_threadsafe(waiter.set_result, None)
        batcher.enqueue(job)
        await waiter
        return job

    def failed(job: Job, doing: str) -> Any:
        if isinstance(job.error, ConfigError):  # the task refused this input or option: the client's to fix
            return error(422, str(job.error))
        return error(500, f"{doing} failed: {type(job.error).__name__}: {job.error}")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def describe() -> dict[str, Any]:
        return {**info, "batches_run": len(batcher.batches), "process": os.getpid()}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    async def predict(request: Any, draw: int = 0, picture: str = "") -> Any:
        if not info["predicts"]:
            return error(404, f"task '{task.name}' samples from nothing: POST /sample instead of /predict.")
        try:
            uploads = await read_uploads(request, limits)
            images = [decode_upload(data, name, limits, task.facts.channels) for name, data in uploads]
        except BadUpload as exc:
            return error(exc.status, str(exc))
        job = await run(Job(images, bool(draw)))
        if job.error is not None:
            return failed(job, "prediction")
        if draw:  # the task's last drawing is the one made for reading (segmentation: masks, then overlays)
            pictures = job.result[0][1]
            if not pictures:
                return error(400, f"task '{task.name}' draws nothing for a prediction.")
            if picture and picture not in pictures:
                return error(400, f"unknown picture '{picture}': task '{task.name}' draws {', '.join(pictures)}.")
            chosen = pictures[picture or list(pictures)[-1]]
            return Response(await asyncio.to_thread(png_bytes, chosen), media_type="image/png")
        names = [name for name, _ in uploads]
        return {"predictions": [{"input": n, **r} for n, (r, _) in zip(names, job.result, strict=True)]}

    async def sample(request: Any, draw: int = 0) -> Any:
        if not info["samples"]:
            return error(404, f"task '{task.name}' predicts on images: POST them to /predict; it does not sample.")
        try:
            wanted = {**(options or {}), **sample_options(request.query_params, task.predict_options, limits, options)}
        except BadUpload as exc:
            return error(exc.status, str(exc))
        job = await run(Job([], bool(draw), call=lambda: draw_samples(predictor, wanted)))
        if job.error is not None:
            return failed(job, "sampling")
        if draw:
            if job.result["grid"] is None:
                return error(400, f"task '{task.name}' writes no grid picture of its samples.")
            return Response(base64.b64decode(job.result["grid"]), media_type="image/png")
        return job.result

    for handler in (predict, sample):  # resolved here: fastapi is imported lazily
        handler.__annotations__.update(request=fastapi.Request, draw=int)
    predict.__annotations__["picture"] = str
    app.post("/predict")(predict)
    app.post("/sample")(sample)
    app.state.batcher, app.state.info = batcher, info
    return app


def draw_samples(predictor: Predictor, options: dict[str, Any]) -> dict[str, Any]:
    """The task's samples for `options`, each as a base64 PNG, and their grid (written to a private folder)."""
    with tempfile.TemporaryDirectory(prefix="visionkit-serve-") as folder:
        done = predictor.run([], folder, options)
        root = Path(folder).resolve()

        def inside(name: Any) -> bool:
            return isinstance(name, str) and name.endswith(".png") and (root / name).resolve().is_relative_to(root)

        def encoded(name: str) -> str:
            return base64.b64encode((root / name).read_bytes()).decode("ascii")

        records = []
        for record in done.get("predictions", []):  # a picture path becomes "png" (or "<key>_png" when several)
            files = [k for k, v in record.items() if inside(v)]
            named = {k: ("png" if len(files) == 1 else f"{k}_png") for k in files}
            records.append({named.get(k, k): encoded(v) if k in named else v for k, v in record.items()})
        grid = encoded(done["grid"]) if inside(done.get("grid")) else None
        return {
            "predictions": records,
            "grid": grid,
            "options": json.loads(json.dumps(done.get("options", {}), default=str)),
        }


def app_from_environment() -> Any:
    """The app of one `--workers K` process, built from the settings `visionkit serve` put in VISIONKIT_SERVE."""
    settings = json.loads(os.environ[SETTINGS])
    for spec in settings.get("plugins") or []:
        import_plugin(spec)
    return build_app(settings["model"], Limits(**settings["limits"]), settings.get("device"), settings.get("options"))
