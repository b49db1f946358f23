"""`visionkit export|profile|explain`: the command lines of tools/export.py, profile.py and explain.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from visionkit.cli.common import add_plugin_option, import_plugins, prog_name, run_command
from visionkit.config import parse_overrides
from visionkit.errors import ConfigError

# Commands import the library inside their functions: `visionkit --help` must not pay for importing torch.


def _positive_ints(text: str) -> list[int]:
    """`--batch 1,8` as [1, 8]; anything else is an argparse error."""
    message = f"expected comma-separated positive integers such as 1,8, got {text!r}"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(message)
    return values


def export_main(argv: Sequence[str] | None = None) -> int:
    """`tools/export.py`: write an ONNX or TorchScript file and its sidecar JSON, checked against PyTorch."""
    p = argparse.ArgumentParser(prog=prog_name("export"), description="Export a visionkit checkpoint.")
    p.add_argument("checkpoint", help="checkpoint .pt or run folder")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch dimension vary")
    p.add_argument("--image-size", type=int, help="input size to export at (default: the model's)")
    p.add_argument("--softmax", action="store_true", help="classification/segmentation: output probabilities")
    p.add_argument("--out", help="output folder (default: <run dir>/export)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    p.add_argument("--dynamo", action="store_true", help="ONNX through torch.export instead of the tracer")
    add_plugin_option(p)
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.deploy.export import export_model

        import_plugins(args.plugin)
        sidecar = export_model(
            args.checkpoint,
            args.format,
            args.out,
            opset=args.opset,
            dynamic_batch=args.dynamic_batch,
            image_size=args.image_size,
            softmax=args.softmax,
            check=not args.no_check,
            dynamo=args.dynamo,
        )
        print(f"wrote {sidecar['path']} and {sidecar['sidecar_path']}")

    return _run_export(go)


def _run_export(fn: Callable[[], Any]) -> int:
    """Like the other commands, plus exit status 1 and the difference table when the parity check fails."""
    from visionkit.deploy.parity import ExportCheckError

    try:
        return run_command(fn)
    except ExportCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def profile_main(argv: Sequence[str] | None = None) -> int:
    """`tools/profile.py`: parameters, FLOPs, memory, latency and throughput of a checkpoint or config's model."""
    p = argparse.ArgumentParser(prog=prog_name("profile"), description="Profile a visionkit model.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint .pt or run folder")
    p.add_argument("--config", help="profile the model a config (or task default, with --task) builds instead")
    p.add_argument("--task", help="task whose default config to profile (with no checkpoint or --config)")
    p.add_argument("--batch", type=_positive_ints, default=[1, 8], help="batch sizes, comma-separated (1,8)")
    p.add_argument("--image-size", type=int, help="input height/width (default: the model's)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per setting (default 30)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    p.add_argument("--out", help="folder for profile.json (default: the current folder)")
    add_plugin_option(p)
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (with --config/--task)")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options

    def go() -> None:
        from pathlib import Path

        from visionkit.deploy.profile import profile

        if args.checkpoint and "=" in args.checkpoint and not Path(args.checkpoint).exists():
            args.overrides.insert(0, args.checkpoint)  # `--task cls model.width=8`: an override, not a checkpoint
            args.checkpoint = None
        if args.checkpoint and args.overrides:
            raise ConfigError(
                f"Overrides ({' '.join(args.overrides)}) apply to --config/--task models; a checkpoint's model is "
                "profiled as it was trained."
            )
        import_plugins(args.plugin)
        if not (args.checkpoint or args.config or args.task):
            raise ConfigError("Give a checkpoint (or run folder), --config FILE, or --task NAME to profile.")
        profile(
            checkpoint=args.checkpoint,
            config=args.config,
            task=args.task,
            overrides=args.overrides,
            batches=args.batch,
            image_size=args.image_size,
            device=args.device,
            iters=args.iters,
            compile=not args.no_compile,
            onnx=not args.no_onnx,
            out=args.out,
        )

    return run_command(go)


def explain_main(argv: Sequence[str] | None = None) -> int:
    """`tools/explain.py`: class activation maps over images, as overlays and explain.json."""
    p = argparse.ArgumentParser(prog=prog_name("explain"), description="Explain a visionkit model's predictions.")
    p.add_argument("checkpoint", help="checkpoint .pt or run folder")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "eigencam", "scorecam"])
    p.add_argument("--class", dest="target_class", help="class name or index to explain (default: the predicted)")
    p.add_argument("--target-layer", default="auto", help="'auto' or a module name from model.named_modules()")
    p.add_argument("--min-side", type=int, default=512, help="scale overlays up to this shorter side (0: as is)")
    p.add_argument("--out", default="explain", help="output folder (default: explain)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    add_plugin_option(p)
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.deploy.explain import explain

        import_plugins(args.plugin)
        explain(
            args.checkpoint,
            args.inputs,
            args.out,
            method=args.method,
            target_class=args.target_class,
            target_layer=args.target_layer,
            device=args.device,
            min_side=args.min_side,
        )
        print(f"wrote overlays and explain.json to {args.out}")

    return run_command(go)


def check_ranges(args: argparse.Namespace) -> None:
    """ConfigError naming the first `visionkit serve` number out of its range."""
    lows = {"workers": 1, "port": 0, "max_batch": 1, "max_wait_ms": 0, "max_upload_mb": 1e-6, "max_pixels": 1,
            "max_samples": 1, "max_queue": 1}  # fmt: skip
    for key, low in lows.items():
        value, top = getattr(args, key), 65535 if key == "port" else float("inf")
        if not low <= value <= top:
            upper = "65535" if key == "port" else "any larger number"
            raise ConfigError(f"--{key.replace('_', '-')} is {value}; give {low:g} up to {upper}.")


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`visionkit serve`: a checkpoint, run folder or exported model behind HTTP (FastAPI + uvicorn)."""
    p = argparse.ArgumentParser(prog=prog_name("serve"), description="Serve a visionkit model over HTTP.")
    p.add_argument("model", help="checkpoint .pt, run folder, or an exported model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1, loopback only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes (each loads the model)")
    p.add_argument("--max-batch", type=int, default=8, help="images run together at most (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for company")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels")
    p.add_argument("--max-samples", type=int, default=64, help="most images one /sample request may ask for")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting for the model; more get 503")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="predict option for every request, e.g. score_threshold=0.3, topk=3 (repeatable)")  # fmt: skip
    add_plugin_option(p)
    args = p.parse_args(argv)

    def go() -> None:
        from visionkit.deploy.serve import SETTINGS, Limits, build_app
        from visionkit.errors import require

        uvicorn = require("uvicorn", "visionkit serve")
        import_plugins(args.plugin)
        limits = Limits(int(args.max_upload_mb * 1024 * 1024), args.max_pixels, args.max_batch, args.max_wait_ms,
                        args.max_samples, args.max_queue)  # fmt: skip
        check_ranges(args)
        bad = [text for text in args.option if "=" not in text or text.startswith("=")]
        if bad:
            raise ConfigError(f"--option {bad[0]!r} is not KEY=VALUE; write e.g. --option score_threshold=0.3.")
        options = parse_overrides(args.option)
        app = build_app(args.model, limits, args.device, options)  # also checks the model before any worker starts
        if args.workers > 1:  # each worker process builds its own app (and model) from these settings
            app.state.batcher.stop()  # the parent lets go of its model; each worker loads its own
            del app
            settings = {"model": str(args.model), "limits": vars(limits), "device": args.device,
                        "plugins": args.plugin, "options": options}  # fmt: skip
            os.environ[SETTINGS] = json.dumps(settings)
            print(f"serving {args.model} on http://{args.host}:{args.port}/ with {args.workers} workers", flush=True)
            uvicorn.run("visionkit.deploy.serve:app_from_environment", factory=True, host=args.host,
                        port=args.port, workers=args.workers, log_level="warning")  # fmt: skip
            return
        print(f"serving {args.model} on http://{args.host}:{args.port}/ (task {app.state.info['task']})", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    return run_command(go)
