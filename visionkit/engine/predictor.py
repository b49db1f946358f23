"""Prediction in the core: inputs -> batches -> outputs, the same for every task.

The predictor walks files, folders (recursively) and globs, reads images, batches them, runs the model
on its device and precision, and writes pictures under paths that mirror the inputs' relative paths plus
one `predictions.json` with a record per input. A task supplies only `preprocess`, `postprocess`, `draw`
and, when it writes more (e.g. COCO results), `finish_predictions`; `read_input` may read more than the
image (e.g. a mask file beside it) or skip a file.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionkit.data import VIDEO_SUFFIXES
from visionkit.data.images import save_image
from visionkit.data.inputs import walk_inputs
from visionkit.engine.contracts import Task
from visionkit.engine.precision import device_of
from visionkit.engine.video import is_stream, predict_video
from visionkit.errors import ConfigError, did_you_mean

# verbose: a line per input (the CLI's); vid_stride / max_frames: videos and streams (visionkit.engine.video)
CORE_OPTIONS = {"batch_size": 16, "progress": True, "verbose": False, "vid_stride": 1, "max_frames": None}


def check_options(task: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The task's predict options with the user's values; unknown ones are an error naming the accepted."""
    accepted = {**CORE_OPTIONS, **task.predict_options}
    unknown = [k for k in options if k not in accepted]
    if unknown:
        hint = did_you_mean(unknown[0], accepted)
        raise ConfigError(
            f"Unknown predict option '{unknown[0]}' for task '{task.name}'.{hint} "
            f"Accepted: {', '.join(f'{k} (default {v!r})' for k, v in accepted.items())}."
        )
    opts = {**accepted, **options}
    for key, value in options.items():
        default = accepted[key]
        kind = type(default)
        if default is None or value is None or isinstance(value, kind) or (kind is float and type(value) is int):
            continue
        if kind in (int, float, bool) or not isinstance(value, (str, int, float, bool)):
            raise ConfigError(
                f"Predict option '{key}' is {value!r}; it takes a {kind.__name__} like its default {default!r}."
            )
    if not isinstance(opts["batch_size"], int) or opts["batch_size"] < 1:
        raise ConfigError(f"Predict option 'batch_size' must be a positive integer, got {opts['batch_size']!r}.")
    return opts


def predicts_on_images(task: Any) -> bool:
    """True when the task implements `postprocess`: it predicts on image files (and served uploads)."""
    return type(task).postprocess is not Task.postprocess


def samples_from_nothing(task: Any) -> bool:
    """True when the task implements `sample`: a prediction without inputs (generation)."""
    return type(task).sample is not Task.sample


def supports_predict(task: Any) -> bool:
    """True when the task implements `postprocess` (prediction on files) or `sample` (generation)."""
    return predicts_on_images(task) or samples_from_nothing(task)


class Predictor:
    """Runs a trained model of any task on image files and writes its outputs."""

    def __init__(self, task: Any, model: nn.Module, autocast: Any = None) -> None:
        self.task, self.model, self.autocast = task, model, autocast
        self.device = device_of(model)

    def run(self, inputs: Sequence[str | Path], out_dir: str | Path, options: Mapping[str, Any] | None = None) -> dict:
        """Predict every input (or sample, for a task that generates from nothing); return what was written."""
        task, out = self.task, Path(out_dir)
        earlier = getattr(task, "predict_earlier", None)  # a task of the earlier protocol predicts by itself
        done = earlier(self.model, [str(i) for i in inputs], out, dict(options or {})) if earlier else None
        if done is not None:
            return done
        if not supports_predict(task):
            raise ConfigError(
                f"Task '{task.name}' does not implement prediction: it needs a `postprocess` method (and usually "
                "`preprocess` and `draw`) on its Task class. See docs/plugins.md, 'Write a new task'."
            )
        opts = check_options(task, options or {})
        if out.exists() and not out.is_dir():
            raise ConfigError(f"The output folder '{out}' is a file; pass a folder for --out.")
        out.mkdir(parents=True, exist_ok=True)
        if not inputs and type(task).sample is Task.sample:
            raise ConfigError(f"Task '{task.name}' needs input images: pass files, folders or glob patterns.")
        if inputs and type(task).postprocess is Task.postprocess:
            raise ConfigError(f"Task '{task.name}' predicts without inputs (it samples); remove the input paths.")
        if not inputs:
            with torch.no_grad(), self._autocast():
                return task.sample(self.model, out, opts)
        streams = [str(i) for i in inputs if is_stream(i) and not Path(str(i)).exists()]
        paths = [i for i in inputs if str(i) not in streams]
        files = walk_inputs(paths, out, videos=True) if paths else []
        videos = [(p, rel) for p, rel in files if p.suffix.lower() in VIDEO_SUFFIXES]
        files = [(p, rel) for p, rel in files if p.suffix.lower() not in VIDEO_SUFFIXES]
        # videos first: a task keeping per-image state for finish_predictions (detection) then sees images last
        clips = [predict_video(self, s, Path(f"stream{k}"), out, opts) for k, s in enumerate(streams)]
        clips += [predict_video(self, p, rel.with_name(rel.name + p.suffix), out, opts) for p, rel in videos]
        records: list[dict[str, Any]] = []
        bar = _progress(len(files), opts["progress"])
        batch: list[tuple[Path, Path, Any, Any]] = []
        for path, rel in files:
            image = task.read_input(path, opts)
            if image is None:  # the task skips this file (e.g. a mask that belongs to another input)
                if bar is not None:
                    bar.update(1)
                continue
            item = (path, rel, image, task.preprocess(image, opts))
            if batch and (len(batch) >= opts["batch_size"] or not _stackable(batch[0][3], item[3], task)):
                records += self._flush(batch, out, opts, bar)
                batch = []
            batch.append(item)
        if batch:
            records += self._flush(batch, out, opts, bar)
        if bar is not None:
            bar.close()
        result = {"task": task.name, "data": task.facts.to_dict(), "predictions": records + clips}
        (out / "predictions.json").write_text(json.dumps(result, indent=2, default=_plain) + "\n")
        extra = (task.finish_predictions(records, out, opts) or {}) if records else {}
        return {**result, "json": str(out / "predictions.json"), **extra}

    def _flush(self, batch: list[tuple[Path, Path, Any, Any]], out: Path, opts: dict[str, Any], bar: Any) -> list:
        task = self.task
        start = time.perf_counter()
        with torch.no_grad(), self._autocast():
            outputs = task.predict_batch(self.model, [item[3] for item in batch], opts)
        per_image = (time.perf_counter() - start) * 1000 / len(batch)
        records = []
        for (path, rel, image, _), output in zip(batch, outputs, strict=True):
            record = {"input": str(path), **task.postprocess(output, image, opts)}
            if opts["verbose"]:
                words = task.describe(record) or "done"
                size = f"{image.shape[1]}x{image.shape[0]}" if hasattr(image, "shape") else ""
                name = (rel.parent / path.name).as_posix()
                line = f"{name} {size}: {words} ({per_image:.1f} ms/image, batch of {len(batch)})"
                bar.write(line) if bar is not None else print(line, flush=True)
            for kind, picture in (task.draw(image, output, opts) or {}).items():
                name = Path(kind) / rel.with_name(rel.name + ".png")
                save_image(picture, out / name)
                record[kind] = name.as_posix()
            records.append(record)
            if bar is not None:
                bar.update(1)
        return records

    def predict_frames(self, images: list[Any], opts: dict[str, Any]) -> list[Any]:
        """The task's outputs for a batch of HWC uint8 images (video frames), preprocessed as files are."""
        task = self.task
        framed = getattr(task, "from_frame", None)  # a task whose `read_input` gives more than the image
        inputs = [task.preprocess(framed(image, opts) if framed else image, opts) for image in images]
        with torch.no_grad(), self._autocast():
            if task.predict_stack and not all(i.shape == inputs[0].shape for i in inputs if hasattr(i, "shape")):
                return [out for i in inputs for out in task.predict_batch(self.model, [i], opts)]
            return task.predict_batch(self.model, inputs, opts)

    def _autocast(self) -> Any:
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()


def _stackable(a: Any, b: Any, task: Any) -> bool:
    """Whether two preprocessed inputs may share a batch (same shape, unless the task takes lists)."""
    if not task.predict_stack:
        return True
    return not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape == b.shape


def _progress(total: int, wanted: Any) -> Any:
    if not wanted or total < 2 or (wanted is True and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img", leave=False, file=sys.stderr, dynamic_ncols=True)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
