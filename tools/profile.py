#!/usr/bin/env python
"""Thin CLI: see `python tools/profile.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from visionkit.deploy.commands import profile_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(profile_main())
