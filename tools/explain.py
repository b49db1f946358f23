#!/usr/bin/env python
"""Thin CLI: see `python tools/explain.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from visionkit.deploy.commands import explain_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(explain_main())
