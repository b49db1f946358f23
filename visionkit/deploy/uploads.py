"""What `visionkit serve` accepts: the limits, the checks every upload passes before any decoding work, and the
options a /sample request may set. Anything refused is a BadUpload: an HTTP status and a message naming it."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionkit.data.images import image_array, upright

MAX_BYTES = 10 * 1024 * 1024  # per upload
MAX_PIXELS = 40_000_000  # per image, checked from the header before decoding
MAX_BATCH, MAX_WAIT_MS = 8, 5.0
MAX_SAMPLES = 64  # per /sample request
MAX_QUEUE = 256  # requests waiting for the model; more are answered 503
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM")  # what Pillow may open (never EPS, PSD, ...)
WORD = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the only text a /sample query value may hold


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
    max_samples: int = MAX_SAMPLES
    max_queue: int = MAX_QUEUE


def decode_upload(data: bytes, name: str, limits: Limits, channels: int | None) -> np.ndarray:
    """An uploaded file as the HWC uint8 image the task reads from disk; BadUpload for anything else."""
    if not data:
        raise BadUpload(400, f"'{name}' is empty; send an image file (PNG, JPEG, ...).")
    if len(data) > limits.max_bytes:
        raise BadUpload(413, f"'{name}' is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes.")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as probe:  # reads the header only
            width, height = probe.size
            if width * height > limits.max_pixels:
                raise BadUpload(
                    413,
                    f"'{name}' is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}.",
                )
            probe.load()
            array = image_array(upright(probe), channels)  # as `visionkit predict` reads a file: EXIF applied
    except BadUpload:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadUpload(413, f"'{name}' decodes to too many pixels ({exc}).") from None
    except Image.UnidentifiedImageError:
        raise BadUpload(415, f"'{name}' could not be decoded as an image in {', '.join(FORMATS)}.") from None
    except ValueError as exc:  # Pillow has no grey or RGB reading of this pixel mode
        raise BadUpload(422, f"'{name}' has a pixel mode with no RGB or grey reading ({exc}).") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's bad file
        why = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", str(exc))  # no addresses of the server's
        raise BadUpload(415, f"'{name}' could not be decoded as an image ({type(exc).__name__}: {why}).") from None
    return array[:, :, None] if array.ndim == 2 else array


async def read_uploads(request: Any, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of every uploaded file: multipart form files, or the raw body as one image.

    The body is read with a running cap (a chunked request declares no length), then parsed from memory."""
    form = request.headers.get("content-type", "").startswith("multipart/form-data")
    cap = limits.max_bytes * limits.max_batch + 64 * 1024 if form else limits.max_bytes  # files, and framing
    declared = int(request.headers.get("content-length") or 0)
    if declared > cap:
        raise BadUpload(413, f"the request is {declared:,} bytes; the limit is {cap:,}.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise BadUpload(413, f"the request is over {cap:,} bytes, the limit.")
    request._body = bytes(body)  # Starlette's cached body: request.form() parses it instead of the stream
    if not form:
        return [("body", bytes(body))]
    try:
        parsed = await request.form(max_files=limits.max_batch, max_fields=limits.max_batch + 16)
    except Exception as exc:  # noqa: BLE001 - a malformed form, or more parts than allowed
        raise BadUpload(400, f"the multipart form could not be read ({getattr(exc, 'detail', exc)}).") from None
    try:
        files = [
            (getattr(v, "filename", None) or k, await v.read()) for k, v in parsed.multi_items() if hasattr(v, "read")
        ]
    finally:
        await parsed.close()
    if not files:
        raise BadUpload(400, "the form holds no file; send images as multipart fields named 'files'.")
    if len(files) > limits.max_batch:
        raise BadUpload(413, f"{len(files)} files in one request; the limit is {limits.max_batch}.")
    return files


def sample_options(
    query: Mapping[str, str], accepted: Mapping[str, Any], limits: Limits, fixed: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The predict options a /sample request sets in its query (JSON values, or plain words); BadUpload if wrong.

    Options the server fixed (`--option`) cannot be changed, and a text value must be a plain word (letters,
    digits, `_`, `-`) that names no file: no request makes the server read a file it names."""
    options: dict[str, Any] = {}
    for key, text in query.items():
        if key == "draw":
            continue
        if key not in accepted:
            raise BadUpload(400, f"'{key}' is not a sample option; accepted: {', '.join(sorted(accepted))}, draw.")
        if fixed and key in fixed:
            raise BadUpload(400, f"'{key}' is fixed by this server at {fixed[key]!r}; leave it out of the query.")
        if len(text) > 1000:
            raise BadUpload(400, f"the value of '{key}' is {len(text):,} characters; the limit is 1,000.")
        try:
            options[key] = json.loads(text)
        except (ValueError, RecursionError):
            options[key] = text  # a word such as sampler=ddim (anything else is refused below)
        for word in _texts(options[key]):
            if not WORD.fullmatch(word) or Path(word).exists():
                raise BadUpload(400, f"{key}={word!r} is not a plain word (letters, digits, _ or -) naming no file.")
    default = (fixed or {}).get("num_samples", min(int(accepted.get("num_samples") or 1), limits.max_samples))
    count = options.get("num_samples", default)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limits.max_samples:
        raise BadUpload(422, f"num_samples is {count!r}; give a whole number from 1 to {limits.max_samples}.")
    return {**options, "num_samples": count, "progress": False}


def _texts(value: Any) -> list[str]:
    """Every string inside a decoded query value (lists and objects searched too)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in [str(k), *_texts(v)]]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []
