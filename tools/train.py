#!/usr/bin/env python
"""Thin CLI: see `python tools/train.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from visionkit.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
