"""The one exception type users see (a clear message, exit status 2 in the CLI), and the messages around it."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any


class VisionkitError(Exception):
    """A user error (bad config, bad file, unknown name); the CLI prints it and exits with 2."""


class ConfigError(VisionkitError):
    """A config key or value is wrong."""


class DataError(VisionkitError):
    """A dataset file or annotation is missing or malformed."""


class PluginError(VisionkitError):
    """A plugin failed to load, or implements a protocol the core cannot use."""


class VisionkitWarning(UserWarning):
    """Something works, but likely not as meant; the command line prints it as `warning: ...`."""


class VisionkitDeprecationWarning(DeprecationWarning):
    """An old name or protocol that still works and goes away in a later release (shown once per place)."""


# Python hides DeprecationWarning outside __main__, so a script calling visionkit.train would never hear that its
# plugin uses an old name: visionkit's own deprecations are shown (once per place) like any warning.
warnings.filterwarnings("default", category=VisionkitDeprecationWarning)


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean 'x'?' for the closest candidates, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def warn(message: str) -> None:
    """Print a one-paragraph warning on stderr, from the main process only (rank 0 under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr, flush=True)


# Optional libraries and the extra that installs them.
EXTRAS = {
    "onnx": "deploy",
    "onnxruntime": "deploy",
    "onnxscript": "deploy",
    "pytorch_grad_cam": "deploy",
    "optuna": "tune",
    "tensorboard": "tensorboard",
    "av": "video",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
}


def require(module: str, feature: str) -> Any:
    """Import an optional library, or stop with a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0], "deploy")
        package = {"pytorch_grad_cam": "grad-cam"}.get(module, module.split(".")[0])
        raise ConfigError(
            f"{feature} needs the '{package}' package, which is not installed ({exc}). "
            f"Install it with: pip install 'visionkit[{extra}]'"
        ) from None
