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
import itertools
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionkit.deploy.batcher import Batcher, Busy, Job
from visionkit.deploy.page import PAGE
from visionkit.deploy.runtime import is_exported, load_exported
from visionkit.deploy.uploads import BadUpload, Limits, decode_upload, read_uploads, sample_options
from visionkit.engine.inference import load_model
from visionkit.engine.predictor import (
    Predictor,
    check_options,
    predicts_on_images,
    samples_from_nothing,
    supports_predict,
)
from visionkit.errors import ConfigError, require
from visionkit.plugins import import_plugin
from visionkit.version import __version__

log = logging.getLogger("visionkit.serve")
SETTINGS = "VISIONKIT_SERVE"  # JSON settings for `--workers K` processes (see app_from_environment)


def load_for_serving(source: str | Path, device: str | None = None) -> tuple[Any, Any, str]:
    """(task, model, model file) of a checkpoint, run folder or exported model."""
    if is_exported(source):
        task, model, path = load_exported(source)
        return task, model, str(path)
    task, model, _ = load_model(source, device=device)
    return task, model, str(source)


def decode_all(uploads: list[tuple[str, bytes]], limits: Limits, channels: int | None) -> list[np.ndarray]:
    """Every upload decoded (BadUpload on the first that fails); run off the event loop."""
    return [decode_upload(data, name, limits, channels) for name, data in uploads]


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
    from starlette.exceptions import HTTPException as StarletteHTTPException

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
    failures = itertools.count(1)  # numbers the server-side failures a client is told about
    if predicts_on_images(task) and not samples_from_nothing(task):  # a blank image through the whole path:
        side = int(task.facts.image_size or 64)  # option values are checked (alpha=2 stops here), the model warm
        blank = np.zeros((side, side, int(task.facts.channels or 3)), np.uint8)
        batcher.record(blank, predictor.predict_frames([blank], chosen)[0], True)
    app = fastapi.FastAPI(title="visionkit", version=__version__)
    info = {
        "task": task.name,
        "classes": list(task.facts.class_names or []),
        "image_size": task.facts.image_size,
        "channels": task.facts.channels,
        "model_file": Path(model_file).name,
        "visionkit_version": __version__,
        "predicts": predicts_on_images(task),  # POST /predict
        "samples": samples_from_nothing(task),  # POST /sample (its costly sampling is not warmed up at start)
        "limits": asdict(limits),
        "options": json.loads(json.dumps(options or {}, default=str)),  # fixed by the server (`--option`)
    }

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": message}, status_code=status)

    async def run(job: Job) -> Job:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()  # resolved from the batcher's thread: no worker thread waits per request
        job.notify = lambda: loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))
        batcher.enqueue(job)
        await waiter
        return job

    def failed(job: Job, doing: str) -> Any:
        if isinstance(job.error, ConfigError):  # the task refused this input or option: the client's to fix
            return error(422, str(job.error))
        number = next(failures)  # the details stay in the server's log; the client gets a reference to them
        log.error("%s failed (error %d)", doing, number, exc_info=job.error)
        return error(500, f"{doing} failed on the server (error {number}); its log has the details.")

    async def refused(request: Any, exc: Any) -> Any:  # FastAPI's own checks (e.g. ?draw=x), in our shape
        where = [" ".join(map(str, e.get("loc", ()))) for e in exc.errors()]
        parts = [f"{w}: {e.get('msg')} (got {e.get('input')!r})" for w, e in zip(where, exc.errors(), strict=True)]
        return error(422, f"bad request: {'; '.join(parts)}.")

    async def not_here(request: Any, exc: Any) -> Any:  # unknown paths and methods, in our shape
        known = "GET /, /health, /info; POST /predict, /sample"
        what = f"{request.method} {request.url.path}"
        return error(exc.status_code, f"{what}: {exc.detail}; this server answers {known}.")

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok"} if batcher.alive() else error(503, "the model's batcher thread has stopped.")

    @app.get("/info")
    def describe() -> dict[str, Any]:
        return {**info, "batches_run": batcher.batches_run, "process": os.getpid()}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    async def predict(request: Any, draw: int = 0, picture: str = "") -> Any:
        if not info["predicts"]:
            return error(404, f"task '{task.name}' samples from nothing: POST /sample instead of /predict.")
        try:
            uploads = await read_uploads(request, limits)
            images = await asyncio.to_thread(decode_all, uploads, limits, task.facts.channels)
            job = await run(Job(images, bool(draw)))
        except (BadUpload, Busy) as exc:
            return error(exc.status, str(exc))
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
            job = await run(Job([], bool(draw), call=lambda: draw_samples(predictor, wanted)))
        except (BadUpload, Busy) as exc:
            return error(exc.status, str(exc))
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
    app.add_exception_handler(fastapi.exceptions.RequestValidationError, refused)
    app.add_exception_handler(StarletteHTTPException, not_here)
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
