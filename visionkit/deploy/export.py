"""Export a checkpoint to ONNX or TorchScript, write its sidecar JSON, and check it against PyTorch."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from visionkit.deploy.parity import ExportCheckError, check_parity, format_table
from visionkit.deploy.runtime import ExportedSession, sidecar_path
from visionkit.engine.export_spec import ExportOptions, ExportSpec
from visionkit.engine.inference import load_model
from visionkit.errors import ConfigError, VisionkitError, require
from visionkit.plugins import describe as describe_plugin
from visionkit.version import __version__

DEFAULT_OPSET = 17  # the tracer's well-trodden opset; torch.export-based export needs 18 or later
CHECK_IMAGES = 16  # validation images the parity check runs
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript"}
SIDECAR_VERSION = 1


@contextlib.contextmanager
def _quiet_export() -> Any:
    """Silence the tracer's warnings about Python values it records as constants (the parity check judges)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.* announce their deprecation
        yield


def write_onnx(spec: ExportSpec, path: str | Path, opset: int | None = None, dynamo: bool = False) -> None:
    """Write `spec.module` as an ONNX file with named inputs/outputs and the spec's dynamic axes."""
    onnx = require("onnx", "ONNX export")
    opset = opset or (18 if dynamo else DEFAULT_OPSET)
    names = {"input_names": [i.name for i in spec.inputs], "output_names": [o.name for o in spec.outputs]}
    with _quiet_export(), torch.no_grad():
        if dynamo:
            require("onnxscript", "ONNX export with --dynamo")
            program = torch.onnx.export(
                spec.module, spec.example, dynamo=True, opset_version=opset, dynamic_axes=spec.dynamic_axes(),
                verbose=False, **names,
            )  # fmt: skip
            program.save(str(path))
        else:
            torch.onnx.export(
                spec.module, spec.example, str(path), dynamo=False, opset_version=opset,
                dynamic_axes=spec.dynamic_axes(), do_constant_folding=True, **names,
            )  # fmt: skip
    onnx.checker.check_model(str(path))


def write_torchscript(spec: ExportSpec, path: str | Path) -> None:
    """Write `spec.module` traced with its example inputs as a TorchScript file."""
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(spec.module, spec.example, check_trace=False, strict=False)
    traced.save(str(path))


def sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def exported_facts(facts: Any, spec: ExportSpec) -> dict[str, Any]:
    """The data facts for the sidecar; a fixed square input size (e.g. from --image-size) is the image size."""
    data = facts.to_dict()
    shape = spec.inputs[0].shape if spec.inputs else []
    if data.get("image_size") and len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
        data["image_size"] = shape[2]  # predict resizes to what the exported model takes
    return data


def checkpoint_file(checkpoint: str | Path) -> Path:
    """The checkpoint file a path names (a run folder means its checkpoints/best.pt)."""
    path = Path(checkpoint)
    return path / "checkpoints" / "best.pt" if path.is_dir() else path


def check_inputs(task: Any, spec: ExportSpec, limit: int = CHECK_IMAGES) -> tuple[list[tuple[torch.Tensor, ...]], str]:
    """Inputs for the parity check: up to `limit` validation images, or shaped random data when none load."""
    if not spec.reads_data:
        return spec.make_inputs(None, limit), "random inputs of the exported signature"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = task.build_dataset("val")
            samples = [dataset[i] for i in range(min(limit, len(dataset)))]
    except (VisionkitError, OSError, KeyError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return spec.make_inputs(None, limit), f"random inputs (validation data not readable: {reason})"
    if not samples:
        return spec.make_inputs(None, limit), "random inputs (the validation set is empty)"
    return spec.make_inputs(samples, limit), f"{len(samples)} validation images"


def export_model(
    checkpoint: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    image_size: int | None = None,
    softmax: bool = False,
    check: bool = True,
    dynamo: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint (or run folder) and check it; return the sidecar (plus 'path' and 'sidecar_path')."""
    if fmt not in FILE_NAMES:
        raise ConfigError(f"Export format {fmt!r} is unknown; choose one of {', '.join(FILE_NAMES)}.")
    if dynamo and fmt != "onnx":
        raise ConfigError("--dynamo applies to ONNX export only; drop it for --format torchscript.")
    if image_size is not None and image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 pixels, got {image_size}.")
    if fmt == "onnx":
        require("onnx", "ONNX export")
    source = checkpoint_file(checkpoint)
    task, model, cfg = load_model(checkpoint, device="cpu")
    model.float().eval()
    spec = task.export_spec(model, ExportOptions(image_size=image_size, dynamic_batch=dynamic_batch, softmax=softmax))
    if spec is None:
        raise ConfigError(
            f"Task '{task.name}' declares no export signature: its Task class needs an `export_spec` method "
            "(see docs/deploy.md, 'Exporting a plugin task')."
        )
    spec.module.eval()
    folder = source.resolve().parent
    run_dir = folder.parent if folder.name == "checkpoints" else folder  # <run>/checkpoints/best.pt -> <run>
    out_dir = Path(out) if out is not None else run_dir / "export"
    if out is not None and not out_dir.is_dir() and out_dir.suffix in (".onnx", ".torchscript", ".json", ".pt"):
        raise ConfigError(f"--out '{out_dir}' looks like a file name; give a folder (the model is {FILE_NAMES[fmt]}).")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out '{out_dir}' is a file; give a folder for the exported model.")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / FILE_NAMES[fmt]
    opset_used = (opset or (18 if dynamo else DEFAULT_OPSET)) if fmt == "onnx" else None
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        staged = Path(tmp) / final.name
        try:
            if fmt == "onnx":
                write_onnx(spec, staged, opset_used, dynamo)
            else:
                write_torchscript(spec, staged)
        except VisionkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - an exporter failure is reported with the model and the step
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = " torch.export cannot capture this model; export without --dynamo." if dynamo else ""
            raise ConfigError(
                f"Exporting the {task.name} model '{cfg['model'].get('name')}' to {fmt} failed: {first[:300]}{hint}"
            ) from exc
        check_record: dict[str, Any] = {"passed": None, "skipped": True}
        if check:
            inputs, what = check_inputs(task, spec)
            session = ExportedSession(staged, fmt, [i.name for i in spec.inputs])
            rows = check_parity(spec, session, inputs)
            table = format_table(rows)
            runtime = "onnxruntime (CPU)" if fmt == "onnx" else "TorchScript"
            if not all(r.passed for r in rows):
                earlier = f" (the earlier {final.name} there is left as it was)" if final.exists() else ""
                raise ExportCheckError(
                    f"the exported model disagrees with PyTorch on {what} ({runtime} vs eager); nothing was "
                    f"written to {out_dir}{earlier}.\n{table}",
                    rows,
                )
            print(f"parity check passed on {what} ({runtime} vs eager PyTorch):\n{table}")
            check_record = {
                "passed": True,
                "inputs": what,
                "runtime": runtime,
                "rows": [{"output": r.output, "max_abs_diff": r.max_abs_diff, "tolerance": r.tolerance} for r in rows],
            }
        exporter = ("torch.export (dynamo)" if dynamo else "torch.jit tracer") if fmt == "onnx" else "torch.jit.trace"
        sidecar = {
            "visionkit_export": SIDECAR_VERSION,
            "format": fmt,
            "file": final.name,
            "task": task.name,
            "data": exported_facts(task.facts, spec),
            "inputs": [i.to_dict() for i in spec.inputs],
            "outputs": [o.to_dict() for o in spec.outputs],
            "preprocess": {
                "mean": task.facts.mean,
                "std": task.facts.std,
                "channels": task.facts.channels,
                "val_transforms": cfg["data"].get("val_transforms"),
            },
            "export": {
                "dynamic_batch": dynamic_batch,
                "softmax": softmax,
                "image_size": image_size,
                "exporter": exporter,
            },
            "notes": spec.notes,
            "predict": spec.notes.get("predict", True),
            "source": {"checkpoint": str(source.resolve()), "sha256": sha256(source)},
            "versions": {"visionkit": __version__, "torch": torch.__version__, "opset": opset_used},
            "check": check_record,
            "config": cfg,
            "plugins": [describe_plugin(name) for name in cfg.get("plugins") or []],  # information only
        }
        if fmt == "onnx":
            sidecar["versions"]["onnx"] = require("onnx", "ONNX export").__version__
        staged_json = Path(tmp) / "sidecar.json"
        staged_json.write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
        os.replace(staged, final)
        os.replace(staged_json, sidecar_path(final))
    return {**sidecar, "path": str(final), "sidecar_path": str(sidecar_path(final))}
