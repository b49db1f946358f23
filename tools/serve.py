#!/usr/bin/env python
"""Thin CLI: see `python tools/serve.py --help`."""

import sys
from pathlib import Path

# Run from a checkout without installing; the repository root replaces tools/ on the path, because
# tools/profile.py would otherwise shadow the standard library's `profile` module (imported by torch).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from visionkit.cli.deploy import serve_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(serve_main())
