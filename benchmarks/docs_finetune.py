"""`make docs-check`: run every command of docs/finetune.md, as written there, and check each figure the page
quotes against what the commands print.

The page's own YAML blocks (`# my_digits.yaml`, `# space.yaml`) and bash blocks are what runs, in a fresh
folder, with one torch thread (as the page says). Figures that depend only on the data, the seeds and the
code (counts, accuracies, the suggested learning rate, the sweep's trials) must appear on the page exactly as
printed; wall times are reported beside the page's, not compared. Exit status 1 lists every difference.

    python benchmarks/docs_finetune.py [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "finetune.md"


def blocks(text: str, language: str) -> list[str]:
    """The page's fenced blocks of one language, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def run(line: str, cwd: Path) -> tuple[str, float]:
    """One command of the page (python -> this interpreter, tools/ and benchmarks/ -> the checkout's)."""
    command = line.split("  #")[0].strip()
    command = re.sub(r"^python ", f"{sys.executable} ", command)
    command = re.sub(r"(?<=\s)(tools|benchmarks)/", lambda m: f"{ROOT}/{m.group(1)}/", command)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VISIONKIT_PROGRESS_SECONDS": "100000"}
    start = time.perf_counter()
    proc = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`{line}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, seconds


def figures(work: Path, text: str, reuse: bool = False) -> tuple[list[str], dict[str, float]]:
    """Run the page; return the snippets the page must contain (from the outputs) and the wall times."""
    for block in blocks(text, "yaml"):
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".yaml"):
            (work / first[2:]).write_text(block)
    outputs: dict[str, str] = {}
    times: dict[str, float] = {}
    saved = work / "outputs.json"
    if reuse and saved.is_file():  # --reuse: the outputs of an earlier run in this folder
        outputs, times = json.loads(saved.read_text()).values()
    else:
        for block in blocks(text, "bash"):
            for line in block.strip().splitlines():
                outputs[line], times[line.split("  #")[0].strip()] = run(line, work)
        run("python tools/predict.py runs/best data/digits/val/7 --out preds_ckpt/", work)  # the checkpoint's
        saved.write_text(json.dumps({"outputs": outputs, "times": times}))
    expected = []
    train, val = work / "data" / "digits" / "train", work / "data" / "digits" / "val"
    counts = {d.name: len(list(d.glob("*.png"))) for d in sorted(train.iterdir())}
    vcounts = [len(list(d.glob("*.png"))) for d in sorted(val.iterdir())]
    rare = [counts[str(k)] for k in range(5, 10)]
    expected += [f"{sum(counts.values())} images", f"only {min(rare)}-{max(rare)} each",
                 f"{sum(vcounts)} images, {min(vcounts)}-{max(vcounts)} per class"]  # fmt: skip
    dry = next(v for k, v in outputs.items() if "--dry-run" in k)
    for pattern in (r"parameters: [\d,]+ total", r"\d+ batches and \d+ updates per epoch, \d+ updates in all",
                    r"mean -?[\d.]+\n", r"group 0: \d+ tensors, [\d,]+ params", r"group 1: \d+ tensors, [\d,]+ params",
                    r"train: \d+ samples  val: \d+"):  # fmt: skip
        expected.append(re.search(pattern, dry).group(0).strip())
    lr = next(v for k, v in outputs.items() if " lr " in k)
    expected.append(re.search(r"range test: \d+ updates from lr [\d.e-]+", lr).group(0))
    expected.append(re.search(r"suggested lr: [\d.e-]+", lr).group(0))
    for name in ("plain", "balanced"):
        summary = json.loads((work / "runs" / name / "summary.json").read_text())
        rare_acc = ", ".join(f"{summary['per_class_accuracy'][str(k)]:.2f}" for k in range(5, 10))
        expected.append(f"| {summary['final']['val/top1']:.3f} | {rare_acc} |")
    sweep = next(v for k, v in outputs.items() if " sweep " in k)
    rows = re.findall(r"^\| \d+ .*$", sweep, re.M)
    expected += [re.sub(r"\|[^|]*\|\s*$", "|", row.strip()) for row in rows]  # the last cell is the seconds
    expected.append(re.search(r"best: trial \d+, val/top1 [\d.]+", sweep).group(0))
    best = json.loads((work / "runs" / "best" / "summary.json").read_text())
    expected.append(f"best val/top1 {best['best']['val/top1']:.4f} (final\n  {best['final']['val/top1']:.4f}")
    sidecar = json.loads((work / "runs" / "best" / "export" / "model.onnx.json").read_text())
    expected.append(f"parity check on {sidecar['check']['inputs']}")
    tops = []
    for folder in ("preds", "preds_ckpt"):
        records = json.loads((work / folder / "predictions.json").read_text())["predictions"]
        tops.append({Path(r["input"]).name: r["top"][0]["name"] for r in records})
    same = sum(tops[0][k] == tops[1].get(k) for k in tops[0])
    expected.append(f"same top-1 class on all {same} validation")
    expected.append(f"images of digit 7 ({list(tops[0].values()).count('7')} of them predicted 7)")
    overlays = len(list((work / "explain").rglob("*.png")))
    expected.append(f"wrote {overlays} Grad-CAM overlays")
    return expected, times


def main() -> None:
    """Run the page, compare, print the report; exit 1 on a difference."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="with --keep: check the outputs of an earlier run there")
    args = p.parse_args()
    text = PAGE.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        expected, times = figures(work, text, args.reuse)
    flat = re.sub(r"\s+", " ", text)
    missing = [e for e in expected if re.sub(r"\s+", " ", e) not in flat]
    for e in expected:
        print(("ok    " if e not in missing else "DIFF  ") + e.replace("\n", " "))
    for command, seconds in times.items():
        print(f"time  {seconds:6.1f} s  {command}")
    if missing:
        raise SystemExit(f"{len(missing)} figure(s) of {PAGE.name} differ from what the commands print (DIFF above).")


if __name__ == "__main__":
    main()
