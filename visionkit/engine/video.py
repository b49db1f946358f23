"""Predict on video files and streams (PyAV, the `video` extra): each decoded frame goes through the task's own
preprocess, predict_batch, postprocess and draw; out come a JSON-lines record per frame and, when the task draws,
an annotated video at the input's frame rate (divided by `vid_stride`).

Sources: video files (VIDEO_SUFFIXES, also inside folders given to predict), webcam indices (`0` opens
/dev/video0 through v4l2) and stream URLs (rtsp, rtmp, http(s), udp, tcp). A stream reads at most `max_frames`
frames (STREAM_FRAMES unless given), so a live source ends.
"""

from __future__ import annotations

import json
import re
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionkit.errors import DataError, require

STREAM_FRAMES = 300  # frames read from a webcam or stream when `max_frames` is not given
STREAM_PATTERN = re.compile(r"^(rtsp|rtmp|https?|udp|tcp)://", re.IGNORECASE)
CODECS = ("libx264", "h264", "mpeg4")  # the first PyAV's FFmpeg offers writes the annotated video


def is_stream(source: str | Path) -> bool:
    """A webcam index ('0') or a stream URL, as opposed to a file path."""
    text = str(source)
    return text.isdigit() or bool(STREAM_PATTERN.match(text))


def open_source(source: str | Path) -> Any:
    """An opened PyAV container for a file, a webcam index or a URL; a DataError naming the source otherwise."""
    av = require("av", "video and stream predict")
    text = str(source)
    try:
        if text.isdigit():
            return av.open(f"/dev/video{text}", format="v4l2")
        return av.open(text, timeout=10.0) if STREAM_PATTERN.match(text) else av.open(text)
    except (OSError, av.FFmpegError) as exc:
        what = f"webcam {text} (/dev/video{text})" if text.isdigit() else f"video '{text}'"
        raise DataError(f"The {what} could not be opened: {exc}.") from None


class VideoWriter:
    """Writes RGB frames to a video file at a frame rate, opened on the first frame (sizes made even)."""

    def __init__(self, path: Path, fps: Fraction) -> None:
        self.path, self.fps, self.container, self.stream, self.frames = path, fps, None, None, 0

    def write(self, picture: Any) -> None:
        """Append one frame (an HWC uint8 array or a PIL image); every frame is scaled to the first one's size."""
        av = require("av", "video and stream predict")
        image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, np.uint8))
        image = image.convert("RGB")
        if self.container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), "w")
            codec = next(c for c in CODECS if c in av.codecs_available)
            self.stream = self.container.add_stream(codec, rate=self.fps)
            self.stream.width, self.stream.height = image.width // 2 * 2 or 2, image.height // 2 * 2 or 2
            self.stream.pix_fmt = "yuv420p"
        if image.size != (self.stream.width, self.stream.height):
            image = image.resize((self.stream.width, self.stream.height), Image.BILINEAR)
        frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()


def frame_input(rgb: np.ndarray, channels: int | None) -> np.ndarray:
    """A decoded RGB frame as the HWC uint8 image the task reads from files (grey for 1-channel models)."""
    if channels == 1:
        return np.asarray(Image.fromarray(rgb).convert("L"))[:, :, None]
    return np.ascontiguousarray(rgb)


def predict_video(predictor: Any, source: str | Path, rel: Path, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Run the predictor's task on every `vid_stride`-th frame of one source; its record for predictions.json."""
    task, stride = predictor.task, opts["vid_stride"]
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise DataError(f"Predict option 'vid_stride' is {stride!r}; give a positive integer (1: every frame).")
    limit = opts["max_frames"] if opts["max_frames"] is not None else (STREAM_FRAMES if is_stream(source) else None)
    container = open_source(source)
    try:
        stream = container.streams.video[0]
    except IndexError:
        container.close()
        raise DataError(f"'{source}' has no video stream.") from None
    fps = Fraction(stream.average_rate or stream.guessed_rate or 30)
    name = rel.with_name(rel.name + ".mp4")
    writer = VideoWriter(out / "videos" / name, fps / stride)
    frames_file = out / "frames" / rel.with_name(rel.name + ".jsonl")
    frames_file.parent.mkdir(parents=True, exist_ok=True)
    start, done, pending = time.perf_counter(), 0, []
    with frames_file.open("w") as lines:

        def flush() -> None:
            outputs = predictor.predict_frames([p[2] for p in pending], opts)
            for (index, stamp, image), output in zip(pending, outputs, strict=True):
                record = {"frame": index, "time": stamp, **task.postprocess(output, image, opts)}
                lines.write(json.dumps(record, default=_plain) + "\n")
                pictures = task.draw(image, output, opts) or {}
                if pictures:
                    writer.write(next(iter(pictures.values())))
            pending.clear()

        try:
            for index, frame in enumerate(container.decode(stream)):
                if limit is not None and index >= limit:
                    break
                if index % stride:
                    continue
                image = frame_input(frame.to_ndarray(format="rgb24"), task.facts.channels)
                pending.append((index, None if frame.time is None else round(float(frame.time), 6), image))
                done += 1
                if len(pending) >= opts["batch_size"]:
                    flush()
            if pending:
                flush()
        finally:
            container.close()
            writer.close()
    seconds = time.perf_counter() - start
    if opts["verbose"]:
        print(f"{rel.as_posix()}: {done} frames at {float(fps):g} fps in, {done / max(seconds, 1e-9):.1f} frames/s",
              file=sys.stdout, flush=True)  # fmt: skip
    record: dict[str, Any] = {"input": str(source), "frames": done, "fps": float(fps), "vid_stride": stride}
    record["frames_file"] = frames_file.relative_to(out).as_posix()
    if writer.frames:
        record["video"] = writer.path.relative_to(out).as_posix()
    return record


def _plain(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)
