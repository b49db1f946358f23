"""Acceptance benchmark for generation: `tools/train.py --task gen` with defaults, judged by a digits classifier.

1. trains the digits classifier with `tools/train.py --task cls` (unless --classifier gives one);
2. times `tools/train.py --task gen` (the default config or --config, plus key=value overrides given here;
   --checkpoint scores an existing run instead);
3. samples --samples digits from the best checkpoint (EMA weights; ten classes in turn when conditional)
   with the config's sampler, and scores them with the classifier: mean top-1 confidence, how many
   samples each class gets, agreement with the requested class, and the Fréchet distance to the real
   validation digits in the classifier's penultimate features and in pixels;
4. writes a 10x10 grid of the first 100 samples to --grid and everything to <work-dir>/benchmark.json.

Usage: python benchmarks/gen_digits.py [--classifier CKPT] [--work-dir DIR] [--samples 500] [--threads 1]
                                       [--config configs/gen/dcgan.yaml | --checkpoint CKPT]
                                       [--grid docs/images/gen_digits_samples.png] [key=value ...]
The acceptance target: mean confidence >= 0.8, all ten classes predicted, training under 600 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from visionkit.api import load_model  # noqa: E402
from visionkit.tasks.generation.features import CheckpointClassifier, PixelFeatures  # noqa: E402
from visionkit.tasks.generation.metrics import frechet_of_features  # noqa: E402
from visionkit.tasks.generation.visualize import save_grid  # noqa: E402


def run_train(args: list[str], log: Path) -> float:
    """Run tools/train.py with `args`, logging to `log`; return the wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "train.py"), *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"training failed (exit {proc.returncode}); see {log}")
    return seconds


def frechet(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets."""
    return frechet_of_features(real, fake)


def main() -> None:
    """Train, sample, score and report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", help="a classification checkpoint (default: train one with --task cls)")
    p.add_argument("--work-dir", default="runs/bench_gen_digits", help="where both runs and the report go")
    p.add_argument("--samples", type=int, default=500, help="digits to generate and score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", help="also write the 10x10 sample grid here (e.g. docs/images/gen_digits.png)")
    p.add_argument("--checkpoint", help="score this generation checkpoint instead of training one")
    p.add_argument("--config", help="a generation config instead of the default (e.g. gen/dcgan.yaml)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for sampling and scoring here")
    p.add_argument("overrides", nargs="*", help="key=value overrides for the generation run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "scoring_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    classifier = args.classifier
    if classifier is None:
        report["cls_train_s"] = round(
            run_train(["--task", "cls", "--work-dir", str(work / "cls"), "trainer.progress=false"], work / "cls.log"), 1
        )
        classifier = str(work / "cls" / "checkpoints" / "best.pt")
    report["classifier"] = classifier
    checkpoint = args.checkpoint
    if checkpoint is None:
        if (work / "gen").exists():
            shutil.rmtree(work / "gen")  # this script's own run folder: start fresh
        command = [
            "--task",
            "gen",
            *(["--config", args.config] if args.config else []),
            "--work-dir",
            str(work / "gen"),
            *args.overrides,
        ]
        report["command"] = "python tools/train.py " + " ".join(command)
        report["gen_train_s"] = round(run_train(command, work / "gen.log"), 1)
        report["load_after"] = [round(x, 2) for x in os.getloadavg()]
        checkpoint = work / "gen" / "checkpoints" / "best.pt"
    report["checkpoint"] = str(checkpoint)
    task, model, cfg = load_model(checkpoint, device="cpu")
    labels = torch.arange(args.samples) % model.num_classes if getattr(model, "conditional", False) else None
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    fakes = torch.cat(
        [
            task.generate(model, min(100, args.samples - i), None if labels is None else labels[i : i + 100], generator)
            for i in range(0, args.samples, 100)
        ]
    )
    report["sampling_s"] = round(time.perf_counter() - start, 1)
    report["sampling"] = task.sampling_options()

    judge = CheckpointClassifier(classifier).eval()
    val = task.build_dataset("val")
    real = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        probs, fake_feats = judge(fakes)
        _, real_feats = judge(real)
    confidence, predicted = probs.max(dim=1)
    counts = torch.bincount(predicted, minlength=judge.num_classes).tolist()
    report.update(
        {
            "samples": args.samples,
            "mean_confidence": round(float(confidence.mean()), 4),
            "predicted_class_counts": counts,
            "classes_represented": sum(c > 0 for c in counts),
            "frechet_classifier_features": round(frechet(real_feats, fake_feats), 4),
            "frechet_pixels": round(frechet(PixelFeatures()(real), PixelFeatures()(fakes)), 4),
            "real_val_images": len(real),
        }
    )
    if labels is not None:
        report["class_consistency"] = round(float((predicted == labels).float().mean()), 4)
    report["pass"] = bool(
        report["mean_confidence"] >= 0.8
        and report["classes_represented"] == judge.num_classes
        and report.get("gen_train_s", 0) < 600
    )
    grid_path = work / "samples_grid.png"
    first = fakes[:100]
    if labels is not None:  # one row per class
        first = torch.cat([fakes[labels == c][:10] for c in range(model.num_classes)])
    save_grid(first, grid_path, 10)
    if args.grid:
        save_grid(first, args.grid, 10)
    (work / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
