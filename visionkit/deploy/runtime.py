"""Run an exported model (ONNX through onnxruntime, or TorchScript) with the task's own pre/post-processing.

Prediction from an exported file builds no model, dataset or optimizer: the sidecar JSON written beside
the file holds the task, its data facts and the run's config, so the task's `preprocess`, `postprocess`
and `draw` run exactly as for a checkpoint, and only the network call goes to the exported file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionkit.config import load_config
from visionkit.data.facts import DataFacts
from visionkit.engine.contracts import ExportedModel as ExportedModel  # the default stand-in, re-exported here
from visionkit.engine.predictor import Predictor
from visionkit.engine.protocol import build_task
from visionkit.errors import ConfigError, require

EXPORTED_SUFFIXES = (".onnx", ".torchscript")


def is_exported(path: str | Path) -> bool:
    """True for an exported model file or its sidecar JSON (what tools/predict.py runs through this module)."""
    path = Path(path)
    return path.suffix in EXPORTED_SUFFIXES or (path.suffix == ".json" and path.is_file() and _is_sidecar(path))


def _is_sidecar(path: Path) -> bool:
    try:
        return "visionkit_export" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def sidecar_path(model_file: str | Path) -> Path:
    """Where an exported file's sidecar JSON lives: beside it, named `<file>.json` (e.g. model.onnx.json)."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def load_sidecar(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The sidecar JSON of an exported model (given the model file or the JSON) and the model file's path."""
    path = Path(path)
    sidecar_file = path if path.suffix == ".json" else sidecar_path(path)
    if not path.is_file():
        raise ConfigError(f"Exported model '{path}' does not exist. Export one with tools/export.py CHECKPOINT.")
    if not sidecar_file.is_file():
        raise ConfigError(
            f"'{path}' has no sidecar '{sidecar_file.name}' beside it; it holds the task, classes and preprocessing. "
            "Keep the JSON that tools/export.py wrote next to the model file."
        )
    try:
        sidecar = json.loads(sidecar_file.read_text())
    except ValueError as exc:
        raise ConfigError(f"Sidecar '{sidecar_file}' is not valid JSON ({exc}).") from None
    if not isinstance(sidecar, dict) or "visionkit_export" not in sidecar:
        raise ConfigError(f"'{sidecar_file}' is not a visionkit export sidecar (no 'visionkit_export' key).")
    model_path = sidecar_file.parent / str(sidecar.get("file", "")) if path.suffix == ".json" else path
    if not model_path.is_file():
        raise ConfigError(f"Sidecar '{sidecar_file}' names the model file '{model_path}', which does not exist.")
    return sidecar, model_path


class ExportedSession:
    """An exported file ready to run on the CPU: `.run(*tensors) -> list of tensors`, in the declared order."""

    def __init__(self, path: str | Path, fmt: str | None = None, input_names: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.format = fmt or ("onnx" if self.path.suffix == ".onnx" else "torchscript")
        if self.format == "onnx":
            ort = require("onnxruntime", "Running an ONNX model")
            options = ort.SessionOptions()
            options.log_severity_level = 3
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is the user's to fix
                raise ConfigError(f"'{self.path}' could not be loaded as an ONNX model: {_first_line(exc)}") from None
            self.input_names = [i.name for i in self.session.get_inputs()]
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.load announces its deprecation
                    self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
            except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is the user's to fix
                raise ConfigError(
                    f"'{self.path}' could not be loaded as a TorchScript model: {_first_line(exc)}"
                ) from None
            self.input_names = list(input_names)

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The outputs for these inputs (CPU tensors)."""
        if self.format == "onnx":
            feed = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs, strict=True)}
            return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feed)]
        with torch.no_grad():
            out = self.module(*[t.cpu() for t in inputs])
        return list(out) if isinstance(out, (tuple, list)) else [out]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def predict_exported(
    path: str | Path, inputs: Sequence[str | Path], out_dir: str | Path = "predictions", **options: Any
) -> dict[str, Any]:
    """tools/predict.py on an exported model: the task's preprocessing and output files, the exported network."""
    task, model, model_path = load_exported(path)
    result = Predictor(task, model).run([str(i) for i in inputs], out_dir, options)
    return {**result, "model": str(model_path)}


def load_exported(path: str | Path) -> tuple[Any, Any, Path]:
    """(task with its data facts, the exported model as the task's stand-in, the model file) of an export."""
    sidecar, model_path = load_sidecar(path)
    recorded = sidecar.get("plugins") if isinstance(sidecar.get("plugins"), list) else []
    cfg = load_config(sidecar["config"], source=f"Exported model '{model_path}'", plugin_info=recorded)
    task = build_task(cfg)
    task.facts = DataFacts.from_dict(sidecar["data"])
    if not sidecar.get("predict", True):
        raise ConfigError(
            f"An exported {task.name} model is its network only ({', '.join(i['name'] for i in sidecar['inputs'])} "
            "in); sampling runs in Python. Predict with the checkpoint instead: tools/predict.py CHECKPOINT."
        )
    session = ExportedSession(model_path, sidecar["format"], [i["name"] for i in sidecar["inputs"]])
    return task, task.exported_model(session, sidecar), model_path
