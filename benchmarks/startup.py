"""Start-up times: `visionkit --help`, `import visionkit`, and the cls default's dry run (build the data, model
and optimizer, one training step, one validation batch), each the median of --repeats fresh processes; beside
them `yolo help` when an Ultralytics environment is given (--peer-bin /path/to/venv/bin, a scratch venv: the
AGPL tool runs only as a black box).

    python benchmarks/startup.py [--repeats 5] [--peer-bin /tmp/peer/bin] [--out startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], repeats: int) -> float:
    """The median wall time of `cmd` over fresh processes (each must succeed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    """Time each command and print a table (and write JSON with --out)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peer-bin", help="bin folder of a venv with Ultralytics installed, for `yolo help`")
    p.add_argument("--out", help="write the figures to this JSON file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            "visionkit --help": timed([str(BIN / "visionkit"), "--help"], args.repeats),
            "import visionkit": timed([sys.executable, "-c", "import visionkit"], args.repeats),
            "cls default --dry-run": timed(
                [sys.executable, "tools/train.py", "--task", "cls", "--dry-run", "--work-dir", tmp],
                max(1, args.repeats // 2),
            ),
        }
        if args.peer_bin:
            rows["yolo help (Ultralytics)"] = timed([str(Path(args.peer_bin) / "yolo"), "help"], args.repeats)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {sys.version[:6]}"
    print(f"start-up ({machine}; median of fresh processes)")
    for name, seconds in rows.items():
        print(f"  {name:<28} {seconds:6.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "seconds": rows}, indent=2))


if __name__ == "__main__":
    main()
