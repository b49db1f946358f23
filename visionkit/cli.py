"""Command-line entry points behind tools/*.py and the `visionkit` command (argument parsing only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from visionkit.errors import VisionkitError


def _run(fn: Callable[[], Any]) -> int:
    """Call fn; user errors print one short paragraph and return exit status 2 (no traceback)."""
    import warnings

    plain = warnings.formatwarning

    def user_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        """visionkit's own warnings read as `warning: ...`, like its errors (no source path and line)."""
        if category.__module__.startswith("visionkit"):
            return f"warning: {message}\n"
        return plain(message, category, *args, **kwargs)

    warnings.formatwarning = user_warning
    try:
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
    """The error's own message, without the worker traceback torch adds when a DataLoader worker raised it."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        return last[len(prefix) :] if last.startswith(prefix) else last
    return text


def _prog(command: str) -> str:
    """`visionkit COMMAND` under the console script, `COMMAND.py` under tools/."""
    return f"visionkit {command}" if not sys.argv[0].endswith(".py") else f"{command}.py"


def _plugins(names: Sequence[str]) -> None:
    from visionkit.plugins import import_plugin

    for name in names:
        import_plugin(name)


def train_main(argv: Sequence[str] | None = None) -> int:
    """`tools/train.py`: train a task from its default config or a YAML file, with key=value overrides."""
    p = argparse.ArgumentParser(prog=_prog("train"), description="Train a visionkit model.")
    p.add_argument("--task", help="task name or alias (cls, seg, det, gen, or a plugin's task)")
    p.add_argument("--config", help="YAML config (default: the task's packaged visionkit/configs/<task>/default.yaml)")
    p.add_argument("--work-dir", help="run directory (default: runs/<task>/<timestamp>)")
    p.add_argument("--resume", help="'auto' (latest last.pt of the run dir/task) or a checkpoint path")
    p.add_argument("--plugin", action="append", default=[], help="import a plugin module (repeatable)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build data, model, loss and optimizer, run one training and one validation batch, print summaries, "
        "write nothing",
    )
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.api import train

        _plugins(args.plugin)
        if args.dry_run:
            from visionkit.engine.dry_run import dry_run

            if args.resume:
                raise VisionkitError(
                    "--dry-run checks a new run; leave out --resume (a resumed run reuses its config)."
                )
            dry_run(args.config, args.overrides, task=args.task, work_dir=args.work_dir)
            return
        result = train(args.config, args.overrides, task=args.task, work_dir=args.work_dir, resume=args.resume)
        if result.metrics and os.environ.get("RANK", "0") == "0":
            print("final: " + "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))

    return _run(go)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """`tools/eval.py`: metrics of a checkpoint on its validation data (or data.val=... overrides)."""
    p = argparse.ArgumentParser(prog=_prog("eval"), description="Evaluate a visionkit checkpoint.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint .pt (e.g. runs/cls/<time>/checkpoints/best.pt)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--results", help="detection: a COCO results JSON to score against --ann")
    p.add_argument("--ann", help="detection: the COCO annotation JSON for --results")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--plugin", action="append", default=[], help="import a plugin module (repeatable)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = p.parse_args(argv)

    def go() -> None:
        _plugins(args.plugin)
        if args.results or args.ann:
            if not (args.results and args.ann):
                raise VisionkitError("--results and --ann go together: a COCO results JSON and its annotation JSON.")
            from visionkit.tasks.detection.evaluation import evaluate_results_file

            metrics = evaluate_results_file(args.results, args.ann)
        else:
            if not args.checkpoint:
                raise VisionkitError("Give a checkpoint to evaluate (or --results R.json --ann A.json).")
            from visionkit.api import evaluate

            metrics = evaluate(args.checkpoint, args.overrides, device=args.device)
        if args.out:
            from pathlib import Path

            if Path(args.out).is_dir():
                raise VisionkitError(f"--out '{args.out}' is a folder; give a JSON file name such as metrics.json.")
        text = json.dumps(metrics, indent=2, default=float)
        print(text)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")

    return _run(go)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """`tools/predict.py`: run a checkpoint on images or folders; JSON and annotated images out."""
    p = argparse.ArgumentParser(prog=_prog("predict"), description="Predict with a visionkit checkpoint.")
    p.add_argument("checkpoint", help="checkpoint .pt, run folder, or an exported model.onnx / model.torchscript")
    p.add_argument("inputs", nargs="*", help="image files or folders (generation: none)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task option, e.g. topk=3, num_samples=64, score_threshold=0.3 (repeatable)",
    )
    p.add_argument("--plugin", action="append", default=[], help="import a plugin module (repeatable)")
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.api import predict
        from visionkit.config import parse_overrides

        _plugins(args.plugin)
        options = parse_overrides(args.option)
        predict(args.checkpoint, args.inputs, args.out, device=args.device, **options)
        print(f"wrote results to {args.out}")

    return _run(go)


def list_main(argv: Sequence[str] | None = None) -> int:
    """`tools/list.py`: every registered component by kind and task, with its origin."""
    p = argparse.ArgumentParser(prog=_prog("list"), description="List registered visionkit components.")
    p.add_argument("--task", help="only components for this task")
    p.add_argument("--kind", help="only this kind (tasks, models, datasets, losses, metrics, transforms, callbacks)")
    p.add_argument("--plugin", action="append", default=[], help="import a plugin module (repeatable)")
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.registry import ALL, TASKS

        _plugins(args.plugin)
        task = TASKS.canonical(args.task) if args.task else None
        if args.kind and args.kind not in ALL:
            from visionkit.errors import did_you_mean

            hint = did_you_mean(args.kind, ALL)
            raise VisionkitError(f"--kind {args.kind!r} is unknown.{hint} Kinds: {', '.join(ALL)}.")
        for kind, registry in ALL.items():
            if args.kind and kind != args.kind:
                continue
            rows = [
                e
                for e in registry.entries()
                if task is None or (e.name == task if kind == "tasks" else not e.tasks or task in e.tasks)
            ]
            if not rows:
                continue
            print(f"{kind}:")
            for e in rows:
                aliases = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
                tasks = ",".join(e.tasks) or "any"
                print(f"  {e.name:<28} task={tasks:<16} origin={e.origin}{aliases}")

    return _run(go)


def main(argv: Sequence[str] | None = None) -> int:
    """`visionkit train|eval|predict|list ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from visionkit.deploy.commands import explain_main, export_main, profile_main
    from visionkit.tune.commands import tune_main

    commands = {
        "train": train_main,
        "eval": eval_main,
        "predict": predict_main,
        "list": list_main,
        "export": export_main,
        "profile": profile_main,
        "explain": explain_main,
        "tune": tune_main,
    }
    usage = (
        "usage: visionkit {train,eval,predict,list,export,profile,explain,tune} ...\n\n"
        "  train    train a task (--task cls|seg|det|gen|<plugin task>, or --config FILE) with key=value overrides\n"
        "  eval     metrics of a checkpoint (or run folder) on its validation data\n"
        "  predict  run a checkpoint on image files, folders or globs; writes predictions.json and pictures\n"
        "  list     every registered component, its task and origin\n"
        "  export   ONNX or TorchScript file plus sidecar JSON, checked against PyTorch (onnxruntime)\n"
        "  profile  parameters, FLOPs, latency and throughput (eager, torch.compile, onnxruntime)\n"
        "  explain  Grad-CAM family heatmaps over images\n"
        "  tune     `tune lr`: learning-rate range test; `tune sweep`: Optuna search over any config keys\n\n"
        "`visionkit COMMAND --help` shows a command's options."
    )
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    if argv and argv[0] == "--version":
        from visionkit import __version__

        print(f"visionkit {__version__}")
        return 0
    if not argv or argv[0] not in commands:
        print(usage, file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
