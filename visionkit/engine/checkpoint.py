"""Checkpoints: atomic writes, RNG state capture, and loading with `weights_only=True`."""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionkit.errors import DataError, VisionkitError


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch and CUDA, in types `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        error = _write_failure(path, exc)
        if error is None:
            raise
        raise error from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_failure(path: Path, exc: BaseException) -> VisionkitError | None:
    """A disk that filled up while writing a checkpoint, in the user's terms (None for any other failure)."""
    text = str(exc)
    free = shutil.disk_usage(path.parent).free
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text.lower()
    if not full and not ("write failed" in text and free < 64 * 2**20):  # torch's zip writer: "file write failed"
        return None
    kept = "the previous checkpoint there is kept" if path.exists() else "nothing was written there"
    return VisionkitError(
        f"Could not write the checkpoint '{path}': the disk holding '{path.parent}' is full ({free / 2**20:.0f} MiB "
        f"free); {kept}. Free some space (or move the run with --work-dir) and continue with --resume auto."
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a visionkit checkpoint on the CPU with `weights_only=True`."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints" / "best.pt").is_file():
        path = path / "checkpoints" / "best.pt"  # a run directory: its best checkpoint
    if path.suffix in (".onnx", ".torchscript"):
        raise VisionkitError(
            f"'{path}' is an exported model; this command needs a checkpoint (.pt) or a run folder. Exported "
            "models run with predict (tools/predict.py MODEL IMAGES)."
        )
    if not path.is_file():
        what = "is a folder without checkpoints/best.pt" if path.is_dir() else "does not exist"
        raise VisionkitError(f"Checkpoint '{path}' {what}. Pass a .pt file from <run>/checkpoints/ or a run folder.")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise VisionkitError(f"'{path}' is not a visionkit checkpoint: {load_failure(path, exc)}.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise VisionkitError(f"'{path}' is not a visionkit checkpoint (no 'model' and 'config' entries).")
    return ckpt


def load_failure(path: str | Path, exc: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in the user's terms (never torch's weights_only advice)."""
    import re

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    text = " ".join(str(exc).split())
    unsafe = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", text)
    if unsafe or head[:1] == b"\x80":
        what = f" (it names {unsafe.group(1)})" if unsafe else ""
        return (
            f"it is a pickle that holds more than tensors and plain containers{what}, and files are loaded with "
            "weights_only=True so that nothing in them can run code"
        )
    if head.startswith(b"PK"):
        return "it is a zip archive but not a complete PyTorch file (cut short while copying, or another format)"
    return "its bytes are not a PyTorch file (neither a zip archive nor a pickle)"


def inference_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to evaluate with: the EMA weights when the run kept them, else the model's."""
    ema = ckpt.get("ema")
    if not ema:
        return ckpt["model"]
    return {k[len("module.") :]: v for k, v in ema.items() if k.startswith("module.")}


def check_same_facts(saved: dict[str, Any] | None, facts: Any, path: Any) -> None:
    """Refuse to resume on data whose classes or channels differ from the checkpoint's (DataError)."""
    if not saved:
        return
    for key in ("class_names", "num_classes", "channels"):
        old, new = saved.get(key), getattr(facts, key)
        if old is not None and new is not None and old != new:
            raise DataError(
                f"Checkpoint '{path}' was trained on data with {key} {old!r}, but the data now has {new!r}. "
                "Resume only on the same data (same classes in the same order), or start a new run."
            )
