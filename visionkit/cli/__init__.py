"""The `visionkit` command and the entry points behind tools/*.py (argument parsing only)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from visionkit.cli.commands import eval_main, list_main, predict_main, train_main
from visionkit.cli.common import user_message
from visionkit.cli.convert import convert_main
from visionkit.cli.deploy import explain_main, export_main, profile_main, serve_main
from visionkit.cli.tune import lr_main, sweep_main, tune_main
from visionkit.errors import did_you_mean
from visionkit.version import __version__

__all__ = [
    "convert_main",
    "eval_main",
    "explain_main",
    "export_main",
    "list_main",
    "lr_main",
    "main",
    "predict_main",
    "profile_main",
    "serve_main",
    "sweep_main",
    "train_main",
    "tune_main",
    "user_message",
]


def main(argv: Sequence[str] | None = None) -> int:
    """`visionkit train|eval|predict|list|export|profile|explain|tune|convert|serve ...`, --help and --version."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "train": train_main,
        "eval": eval_main,
        "predict": predict_main,
        "list": list_main,
        "export": export_main,
        "profile": profile_main,
        "explain": explain_main,
        "tune": tune_main,
        "convert": convert_main,
        "serve": serve_main,
    }
    usage = (
        "usage: visionkit {train,eval,predict,list,export,profile,explain,tune,convert,serve} ...\n\n"
        "  train    train a task (--task cls|seg|det|gen|<plugin task>, or --config FILE) with key=value overrides\n"
        "  eval     metrics of a checkpoint (or run folder) on its validation data\n"
        "  predict  run a checkpoint on image files, folders or globs; writes predictions.json and pictures\n"
        "  list     every registered component, its task and origin\n"
        "  export   ONNX or TorchScript file plus sidecar JSON, checked against PyTorch (onnxruntime)\n"
        "  profile  parameters, FLOPs, latency and throughput (eager, torch.compile, onnxruntime)\n"
        "  explain  Grad-CAM family heatmaps over images\n"
        "  tune     `tune lr`: learning-rate range test; `tune sweep`: Optuna search over any config keys\n"
        "  convert  datasets between COCO JSON, YOLO txt labels (boxes or polygons) and instance mask PNGs\n"
        "  serve    a checkpoint or exported model behind HTTP: /predict, /health, /info and a page at /\n\n"
        "`visionkit COMMAND --help` shows a command's options."
    )
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    if argv and argv[0] == "--version":
        print(f"visionkit {__version__}")
        return 0
    if not argv or argv[0] not in commands:
        if argv:
            hint = did_you_mean(argv[0], commands)
            print(f"error: unknown command {argv[0]!r}.{hint}\n", file=sys.stderr)
        print(usage, file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
