"""Instance segmentation on one machine: each shipped CPU recipe trained on shapes-instance, then exported.

Trains configs/inst/default.yaml (yolo_seg) and, unless --only says otherwise, configs/inst/maskrcnn.yaml, each
through tools/train.py in its own process, timed from launch to exit (validation passes included); reports the
final mask and box mAP on the 200 validation images (pycocotools segm and bbox) and the ONNX export's parity
check (boxes, scores, labels, mask IoU) of each trained model.

    python benchmarks/instance.py --out instance.json                 # both recipes (about 45 min on 2 cores)
    python benchmarks/instance.py --only default --epochs 4           # a shorter look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("default", "maskrcnn")
KEYS = ("val/mask_mAP", "val/mask_mAP50", "val/mask_mAP75", "val/box_mAP", "val/box_mAP50")


def run(cmd: list[str]) -> tuple[float, str]:
    """Run a command from the repository root; return its wall time and output, raising on failure."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def bench(recipe: str, work: Path, epochs: int | None) -> dict[str, Any]:
    """Train one recipe, export it with the parity check; its figures."""
    run_dir = work / recipe
    extra = [f"trainer.epochs={epochs}"] if epochs else []
    config = ROOT / "configs" / "inst" / f"{recipe}.yaml"
    train_s, _ = run([sys.executable, "tools/train.py", "--config", str(config), "--work-dir", str(run_dir), *extra])
    summary = json.loads((run_dir / "summary.json").read_text())
    export_s, _ = run([sys.executable, "tools/export.py", str(run_dir), "--out", str(run_dir / "export")])
    sidecar = json.loads((run_dir / "export" / "model.onnx.json").read_text())
    rows = {r["output"]: r["max_abs_diff"] for r in sidecar["check"]["rows"]}
    return {
        "recipe": recipe,
        "model": yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"],
        "train_s": round(train_s, 1),
        "export_s": round(export_s, 1),
        **{k: round(float(summary["final"][k]), 4) for k in KEYS},
        "export_check": {"images": sidecar["check"].get("inputs"), **rows},
    }


def main() -> None:
    """Parse options, run the recipes, print a table and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(RECIPES), help=f"comma-separated recipes ({', '.join(RECIPES)})")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (default: each config's own)")
    p.add_argument("--work", default="instance_bench", help="folder for the runs (default instance_bench)")
    p.add_argument("--out", default="instance.json", help="JSON results file")
    args = p.parse_args()
    chosen = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(RECIPES))
    if unknown:
        raise SystemExit(f"--only names {unknown}; accepted: {', '.join(RECIPES)}.")
    results = [bench(r, Path(args.work), args.epochs) for r in chosen]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": sys.version[:6]}
    print(f"{'recipe':10} {'train s':>8} {'mask mAP':>9} {'box mAP':>8}  export check (max diff; masks: 1 - IoU)")
    for r in results:
        check = ", ".join(f"{k} {v:.3g}" for k, v in r["export_check"].items() if k != "images")
        print(f"{r['recipe']:10} {r['train_s']:8.1f} {r['val/mask_mAP']:9.3f} {r['val/box_mAP']:8.3f}  {check}")
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
