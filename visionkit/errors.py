"""The one exception type users see: a clear message, exit status 2 in the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VisionkitError(Exception):
    """A user error (bad config, bad file, unknown name); the CLI prints it and exits with 2."""


class ConfigError(VisionkitError):
    """A config key or value is wrong."""


class DataError(VisionkitError):
    """A dataset file or annotation is missing or malformed."""


class PluginError(VisionkitError):
    """A plugin failed to load."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean 'x'?' for the closest candidates, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
