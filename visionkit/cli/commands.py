"""`visionkit train|eval|predict|list`: the command lines of tools/train.py, eval.py, predict.py and list.py."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
from collections.abc import Sequence

from visionkit.cli.catalog import canonical_task, fast_catalog
from visionkit.cli.common import add_plugin_option, import_plugins, prog_name, run_command
from visionkit.config import parse_overrides
from visionkit.errors import VisionkitError, did_you_mean
from visionkit.registry import ALL, TASKS

# Commands import the library (api, engine, tasks) inside their functions: `visionkit --help` must not pay for
# importing torch (0.09 s instead of 4.6 s on a 2-core CPU). The registry and config need no torch.


def train_main(argv: Sequence[str] | None = None) -> int:
    """`tools/train.py`: train a task from its default config or a YAML file, with key=value overrides."""
    p = argparse.ArgumentParser(prog=prog_name("train"), description="Train a visionkit model.")
    p.add_argument("--task", help="task name or alias (cls, seg, det, gen, or a plugin's task)")
    p.add_argument("--config", help="YAML config (default: the task's configs/<task>/default.yaml, in the package)")
    p.add_argument("--work-dir", help="run directory (default: runs/<task>/<timestamp>)")
    p.add_argument("--resume", help="'auto' (latest last.pt of the run dir/task) or a checkpoint path")
    add_plugin_option(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build data, model, loss and optimizer, run one training and one validation batch, print summaries, "
        "write nothing",
    )
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options

    def go() -> None:
        from visionkit.api import train

        import_plugins(args.plugin)
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

    return run_command(go)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """`tools/eval.py`: metrics of a checkpoint on its validation data (or data.val=... overrides)."""
    p = argparse.ArgumentParser(prog=prog_name("eval"), description="Evaluate a visionkit checkpoint.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint .pt (e.g. runs/cls/<time>/checkpoints/best.pt)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--results", help="detection: a COCO results JSON to score against --ann")
    p.add_argument("--ann", help="detection: the COCO annotation JSON for --results")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (machine output) only")
    add_plugin_option(p)
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options

    def go() -> None:
        import_plugins(args.plugin)
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
        metrics = {k: v for k, v in metrics.items() if not k.startswith("_")}  # '_': pictures' data, not output
        text = json.dumps(metrics, indent=2, default=float)
        if args.json:
            print(text)
        else:
            from visionkit.engine.tables import report_lines

            print("\n".join(report_lines(metrics)))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")

    return run_command(go)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """`tools/predict.py`: run a checkpoint on images or folders; JSON and annotated images out."""
    p = argparse.ArgumentParser(prog=prog_name("predict"), description="Predict with a visionkit checkpoint.")
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
    add_plugin_option(p)
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.api import predict

        import_plugins(args.plugin)
        options = {"verbose": True, **parse_overrides(args.option)}
        predict(args.checkpoint, args.inputs, args.out, device=args.device, **options)
        print(f"wrote results to {args.out}")

    return run_command(go)


def list_main(argv: Sequence[str] | None = None) -> int:
    """`tools/list.py`: every registered component by kind and task, with its origin."""
    p = argparse.ArgumentParser(prog=prog_name("list"), description="List registered visionkit components.")
    p.add_argument("--task", help="only components for this task")
    p.add_argument("--kind", help="only this kind (tasks, models, datasets, losses, metrics, transforms, callbacks)")
    p.add_argument("pattern", nargs="?", help="only names matching this pattern; 'timm/*resnet*' lists timm's models")
    p.add_argument("--limit", type=int, default=50, help="timm patterns: at most this many rows (0: all; 50)")
    add_plugin_option(p)
    args = p.parse_args(argv)

    def go() -> None:
        if args.kind and args.kind not in ALL:
            hint = did_you_mean(args.kind, ALL)
            raise VisionkitError(f"--kind {args.kind!r} is unknown.{hint} Kinds: {', '.join(ALL)}.")
        if args.pattern and args.pattern.startswith("timm/"):
            list_timm(args.pattern.removeprefix("timm/"), args.limit)
            return
        catalog = fast_catalog(args.plugin)  # built-ins only: answered without importing torch
        task = canonical_task(args.task, catalog) if catalog is not None and args.task else None
        if catalog is None or (args.task and task is None):
            catalog = None
            import_plugins(args.plugin)
            task = TASKS.canonical(args.task) if args.task else None
        for kind, registry in ALL.items():
            if args.kind and kind != args.kind:
                continue
            entries = catalog[kind] if catalog is not None else registry.entries()
            rows = [
                e
                for e in entries
                if (task is None or (e.name == task if kind == "tasks" else not e.tasks or task in e.tasks))
                and (not args.pattern or fnmatch.fnmatch(e.name, args.pattern))
            ]
            if not rows:
                continue
            print(f"{kind}:")
            for e in rows:
                aliases = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
                tasks = ",".join(e.tasks) or "any"
                print(f"  {e.name:<28} task={tasks:<16} origin={e.origin}{aliases}")

    return run_command(go)


def list_timm(pattern: str, limit: int) -> None:
    """Print timm's architectures matching `pattern` with parameters, input size and pretrained tags."""
    from visionkit.tasks.classification.models import timm_catalog

    rows, total = timm_catalog(pattern or "*", limit)
    if not rows:
        raise VisionkitError(f"timm has no model matching {pattern!r}; patterns use * and ?, e.g. 'timm/*resnet*'.")
    print(f"timm models matching {pattern!r} ({total}; classification backbones, model.name=timm/<name>):")
    for r in rows:
        params = f"{r['params'] / 1e6:7.2f} M" if r["params"] is not None else "      ? M"
        tags = ", ".join(r["pretrained"][:3]) + (" ..." if len(r["pretrained"]) > 3 else "")
        size = f"{r['input_size']} px" if r["input_size"] else ""
        print(f"  {r['name']:<40} {params}  {size:>7}  pretrained: {tags or 'none'}")
    if total > len(rows):
        print(f"  ... and {total - len(rows)} more (--limit 0 lists all)")
