"""Plumbing every command shares: running it, its messages, its program name and the `--plugin` option."""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from visionkit.errors import VisionkitDeprecationWarning, VisionkitError
from visionkit.plugins import import_plugin

# The library is imported inside the functions: `visionkit --help` must not pay for importing torch (0.09 s
# instead of 4.6 s on a 2-core CPU, docs/benchmarks.md).


def run_command(fn: Callable[[], Any]) -> int:
    """Call fn; user errors print one short paragraph and return exit status 2 (no traceback)."""
    plain = warnings.formatwarning

    def user_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        """visionkit's own warnings read as `warning: ...`, like its errors (no source path and line)."""
        if category.__module__.startswith("visionkit"):
            return f"warning: {message}\n"
        return plain(message, category, *args, **kwargs)

    warnings.formatwarning = user_warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", VisionkitDeprecationWarning)  # shown once each, unlike DeprecationWarning
            fn()
    except VisionkitError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from visionkit.engine.interrupts import exit_status

        if not getattr(exc, "saved", None):  # a second signal, or one outside training: nothing new was saved
            print(
                "interrupted; a run continues from its last checkpoint with --resume auto --work-dir RUN_DIR",
                file=sys.stderr,
            )
        return exit_status(exc)
    finally:
        warnings.formatwarning = plain
    return 0


def user_message(exc: BaseException) -> str:
    """The error's own message, without the worker traceback torch adds when a DataLoader worker raised it; a
    'does not exist' about a relative path says what it was resolved against."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        text = last[len(prefix) :] if last.startswith(prefix) else last
    return text + relative_note(text)


def relative_note(text: str) -> str:
    """' (relative paths are taken from the working folder ...)' when a message says a relative path it quotes
    does not exist or is missing, else ''."""
    if not any(
        word in text for word in ("does not exist", "is missing", "are missing", "not found", "is not a folder")
    ):
        return ""
    quoted = re.findall(r"'([^'\s]+)'", text)
    relative = [q for q in quoted if not os.path.isabs(q) and ("/" in q or "." in q) and not os.path.exists(q)]
    if not relative:
        return ""
    return (
        f" (Relative paths are taken from the working folder '{os.getcwd()}'; a config's `_base_` from the config "
        "file's folder.)"
    )


def prog_name(command: str) -> str:
    """`visionkit COMMAND` under the console script, `COMMAND.py` under tools/."""
    return f"visionkit {command}" if not sys.argv[0].endswith(".py") else f"{command}.py"


def add_plugin_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the repeatable `--plugin MODULE` option to parser (a command's parser or a parent parser); return it."""
    parser.add_argument("--plugin", action="append", default=[], help="import a plugin module (repeatable)")
    return parser


def import_plugins(names: Sequence[str]) -> None:
    """Import each named plugin module, in order, so that its components register."""
    for name in names:
        import_plugin(name)
