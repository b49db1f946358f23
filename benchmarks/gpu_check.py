"""One prepared GPU check: the `cuda` tests, ResNet-50 training throughput (hand loop, trainer, torchrun) with MFU,
the four tasks' default configs with precision auto, and the DCGAN in fp16-mixed; a JSON and a markdown summary.

Usage: python benchmarks/gpu_check.py --out gpu.json          (needs a CUDA GPU; a few minutes)
       python benchmarks/gpu_check.py --cpu --out cpu.json    (every CPU-safe part, tiny, so the script cannot rot)
Exit status: 0 when every check passed, 1 when one failed, 2 without a GPU (and without --cpu).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import gpu_check_parts as parts  # noqa: E402

# Dense bf16 peaks (TFLOP/s, no sparsity) by device name, first match wins; --peak-tflops for other cards.
PEAK_BF16_TFLOPS = [
    (r"H100.*PCIe", 756.0),
    (r"H100 NVL", 835.0),
    (r"H200|H100|GH200", 989.0),
    (r"B200", 2250.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
    (r"A10G", 70.0),
    (r"\bA10\b", 125.0),
]
RESNET50_FLOPS = 24.5e9  # forward + backward of one 224 px image: 3 x 4.1 GMAC x 2 (the figure)
SECTIONS = ("tests", "resnet", "torchrun", "tasks", "gan")
CPU_SECTIONS = ("resnet", "tasks", "gan")
GPU = {"arch": "resnet50", "batch": 256, "size": 224, "warmup": 20, "steps": 60, "workers": 8, "task_steps": 300,
       "gan_steps": 200, "precision": "bf16-mixed", "backend": "inductor"}  # fmt: skip
# --cpu: compile with the "eager" backend (dynamo only): inductor takes minutes on a 2-core CPU.
CPU = {"arch": "resnet18", "batch": 4, "size": 32, "warmup": 1, "steps": 2, "workers": 0, "task_steps": 3,
       "gan_steps": 3, "precision": "fp32", "backend": "eager"}  # fmt: skip
# Tiny task settings for --cpu (as in the tests): seconds each on 2 cores.
SHAPES = "{name: shapes, image_size: 48, num_train: 16, num_val: 6, min_size: 10, max_size: 28, max_objects: 3}"
CPU_TASKS = {
    "cls": ["model.width=8", "model.depth=2", "data.image_size=8", "data.batch_size=32", "data.train_transforms=[]"],
    "seg": ["data.train.num_images=8", "data.val.num_images=4", "data.train.image_size=32", "data.val.image_size=32",
            "data.batch_size=4", "model.encoder=test_efficientnet", "model.decoder_channels=[16,16,8,8,8]",
            "segmentation.num_samples=2"],
    "det": [f"data.train={SHAPES}", f"data.val={SHAPES}", "data.image_size=48", "data.batch_size=8",
            "detection.num_samples=2", "data.train_transforms=[]", "model.fpn_channels=64", "model.head_convs=1"],
    "gen": ["data.image_size=8", "data.batch_size=16", "data.repeat=1", "model.width=8", "model.mults=[1,2]",
            "generation.eval_samples=8", "generation.eval_steps=2", "generation.steps=2", "generation.grid_samples=10"],
    "gan": ["data.image_size=8", "data.batch_size=16", "data.repeat=1", "model.width=8", "model.z_dim=8",
            "generation.eval_samples=8", "generation.grid_samples=10"],
}  # fmt: skip


START = time.perf_counter()


def say(message: str) -> None:
    """Print one progress line at once, with the seconds since the start."""
    print(f"{time.perf_counter() - START:6.1f}s {message}" if message[:1] == "[" else message, flush=True)


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one part; an exception becomes {"error": ...} so the other parts still run."""
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the summary, the run goes on
        out = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        say(f"  {name}: FAILED {out['error']}")
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out.setdefault("seconds", round(time.perf_counter() - start, 2))
    return out


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """Make `torch.compile` (as the trainer calls it) use `backend`; inductor leaves it alone."""
    original = torch.compile
    if backend != "inductor":
        torch.compile = functools.partial(original, backend=backend)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original  # type: ignore[assignment]


def peak_tflops(name: str | None, given: float | None) -> float | None:
    """The card's dense bf16 peak in TFLOP/s: --peak-tflops, else the table, else None (MFU n/a)."""
    if given:
        return given
    return next((tf for pattern, tf in PEAK_BF16_TFLOPS if name and re.search(pattern, name)), None)


def environment(cuda: bool, peak: float | None) -> dict[str, Any]:
    """Card, driver, torch/CUDA/cuDNN versions, CPU and date."""
    import torchvision

    import visionkit

    env: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "visionkit": visionkit.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "card": None,
        "driver": None,
        "peak_bf16_tflops": peak,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(card=props.name, gpus=torch.cuda.device_count(), memory_gib=round(props.total_memory / 2**30, 1))
        env.update(capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.split()[0]
    return env


def run_cuda_tests() -> dict[str, Any]:
    """`pytest -m cuda` in a subprocess: counts of passed/failed/skipped and the output's tail."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    last = next(
        (
            x
            for x in reversed(done.stdout.splitlines())
            if re.search(r"\d+ (passed|failed|skipped|error|deselected)", x)
        ),
        "",
    )
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", last):
        counts["errors" if word.startswith("error") else word] += int(number)
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    return {"returncode": done.returncode, **counts, "tail": tail}


def resnet_cases(args: argparse.Namespace, s: dict[str, Any], device: torch.device, work: Path) -> dict[str, Any]:
    """The model under the hand loop, the trainer and torchrun, eager and compiled."""
    spec = {"name": "torchvision_resnet", "arch": s["arch"]} if args.model == "torchvision" else {
        "name": f"timm/{s['arch']}"}  # fmt: skip
    common = dict(batch=s["batch"], size=s["size"], precision=s["precision"], workers=s["workers"], num_classes=1000)
    cases: dict[str, Any] = {}
    modes = [False] if args.no_compile else [False, True]
    for compiled in modes if "resnet" in args.sections else []:
        tag = "compile" if compiled else "eager"
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        say(f"[resnet] hand loop, {tag}")
        cases[f"hand_{tag}"] = guarded(f"hand_{tag}", lambda c=compiled: {
            **parts.hand_loop(spec, device=device, warmup=s["warmup"], steps=s["steps"], compile=c,
                              backend=s["backend"], **common),
            **(parts.compile_counters() if c else {})})  # fmt: skip
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        say(f"[resnet] visionkit trainer, {tag}")
        cfg = parts.trainer_config(spec, device=str(device), steps=s["warmup"] + s["steps"], log_every=s["warmup"],
                                   compile=compiled, work_dir=str(work / f"trainer_{tag}"), **common)  # fmt: skip

        def trainer(cfg: dict = cfg, c: bool = compiled) -> dict[str, Any]:
            with compile_backend(s["backend"]):
                out = parts.run_visionkit(cfg, [], task=None, work_dir=cfg["work_dir"], after=s["warmup"])
            return {**out, **(parts.compile_counters() if c else {})}

        cases[f"trainer_{tag}"] = guarded(f"trainer_{tag}", trainer)
    if "torchrun" in args.sections:
        for compiled in modes:
            tag = "compile" if compiled else "eager"
            say(f"[resnet] visionkit trainer under torchrun --nproc_per_node=1, {tag}")
            cfg = parts.trainer_config(spec, device=str(device), steps=s["warmup"] + s["steps"],
                                       log_every=s["warmup"], compile=compiled,
                                       work_dir=str(work / f"torchrun_{tag}"), **common)  # fmt: skip
            cases[f"torchrun_{tag}"] = guarded(f"torchrun_{tag}", lambda c=cfg: torchrun(c, s, work))
    return cases


def torchrun(cfg: dict[str, Any], s: dict[str, Any], work: Path) -> dict[str, Any]:
    """The trainer in a `torchrun --nproc_per_node=1` child (see `child`); its result JSON."""
    spec_file, out_file = Path(cfg["work_dir"] + ".spec.json"), Path(cfg["work_dir"] + ".result.json")
    spec_file.write_text(
        json.dumps({"config": cfg, "out": str(out_file), "backend": s["backend"], "after": s["warmup"]})
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", __file__]
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if cfg["trainer"]["device"] == "cpu" else {})}
    done = subprocess.run([*cmd, "--child", str(spec_file)], capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0 or not out_file.is_file():
        raise RuntimeError(f"torchrun exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return json.loads(out_file.read_text())


def child(spec_file: str) -> None:
    """torchrun's worker: open the process group (NCCL on a GPU, gloo on the CPU) when the trainer would not
    (it opens one only for WORLD_SIZE > 1), so DDP runs, then train and write the result (rank 0)."""
    from visionkit.engine import distributed

    spec = json.loads(Path(spec_file).read_text())
    parts.register_components()
    opens = distributed.launched_by_torchrun()
    opened = False
    if not opens and not distributed.is_distributed():
        if spec["config"]["trainer"]["device"].startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        opened = True
    try:
        with compile_backend(spec["backend"]):
            cfg = spec["config"]
            out = parts.run_visionkit(cfg, [], task=None, work_dir=cfg["work_dir"], after=spec["after"])
        out.update(trainer_opens_group=opens, group_opened_by_check=opened)
        if spec["config"]["trainer"]["compile"]:
            out.update(parts.compile_counters())
        if distributed.is_main():
            Path(spec["out"]).write_text(json.dumps(out))
    finally:
        if opened:
            torch.distributed.destroy_process_group()


def task_runs(args: argparse.Namespace, s: dict[str, Any], work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The default configs of cls, seg, det and gen (precision auto), then the DCGAN in fp16-mixed."""
    common = ["trainer.epochs=1000", "trainer.progress=false"]
    if args.cpu:
        common += ["trainer.device=cpu", "trainer.log_every=1", "data.num_workers=0"]
    after = 1 if args.cpu else 20
    tasks, gan = {}, {}
    for name in ("cls", "seg", "det", "gen") if "tasks" in args.sections else ():
        say(f"[tasks] {name} default config, precision auto, {s['task_steps']} steps")
        over = [*common, f"trainer.max_steps={s['task_steps']}", "trainer.precision=auto"]
        over += CPU_TASKS[name] if args.cpu else []
        tasks[name] = guarded(name, lambda n=name, o=over: parts.run_visionkit(
            None, o, task=n, work_dir=str(work / n), after=after))  # fmt: skip
    if "gan" in args.sections:
        say(f"[gan] DCGAN (gen/dcgan.yaml), fp16-mixed with GradScaler, {s['gan_steps']} steps")
        over = [*common, f"trainer.max_steps={s['gan_steps']}", "trainer.precision=fp16-mixed"]
        over += CPU_TASKS["gan"] if args.cpu else []
        gan = guarded("gan", lambda: parts.run_visionkit("gen/dcgan.yaml", over, task=None,
                                                         work_dir=str(work / "gan"), after=after))  # fmt: skip
    return tasks, gan


def add_ratios(cases: dict[str, Any], flops: float, peak: float | None) -> None:
    """Each case's ratio to the hand loop of the same compile setting, and its MFU (percent, None without a peak)."""
    for name, case in cases.items():
        rate = case.get("images_per_s")
        hand = cases.get(f"hand_{name.rsplit('_', 1)[-1]}", {}).get("images_per_s")
        if rate:
            case["vs_hand"] = rate / hand if hand and not name.startswith("hand") else (1.0 if hand else None)
            case["mfu_percent"] = 100 * rate * flops / (peak * 1e12) if peak else None
        if case.get("resident_images_per_s") and peak:
            case["resident_mfu_percent"] = 100 * case["resident_images_per_s"] * flops / (peak * 1e12)


def flops_per_image(arch: str, size: int) -> float:
    """Training FLOPs of one image: the issue's 24.5 GFLOP for ResNet-50 at 224 px, else counted (conv/matmul)."""
    if (arch, size) == ("resnet50", 224):
        return RESNET50_FLOPS
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, images = parts.torchvision_resnet(1000, 3, arch), torch.randn(2, 3, size, size)  # BN needs 2
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    return counter.get_total_flops() / 2


def problems(result: dict[str, Any]) -> list[str]:
    """What failed: errors, non-finite losses, skipped updates, failed cuda tests, a missing figure."""
    found = []
    tests = result["pytest_cuda"]
    if "returncode" in tests and (tests["returncode"] != 0 or tests["failed"] or tests["errors"]):
        found.append(f"pytest -m cuda: {tests['failed']} failed, {tests['errors']} errors (exit {tests['returncode']})")
    elif "returncode" in tests and not tests["passed"]:
        found.append(f"pytest -m cuda: no test passed ({tests['skipped']} skipped): the tests saw no GPU")
    runs = {
        **{f"resnet.{k}": v for k, v in result["resnet"].items()},
        **result["tasks"],
        "gan_fp16": result["gan_fp16"],
    }
    for name, run in runs.items():
        if not run:  # a section not chosen
            continue
        if "error" in run:
            found.append(f"{name}: {run['error'].splitlines()[0][:300]}")
            continue
        if run.get("losses_finite") is False:
            found.append(f"{name}: a loss was not finite")
        if run.get("skipped_updates"):
            found.append(f"{name}: {run['skipped_updates']} updates skipped (non-finite loss)")
        if not (isinstance(run.get("images_per_s"), float) and math.isfinite(run["images_per_s"])):
            found.append(f"{name}: no steady-state images/s")
    return found


def fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    """A number in `spec`, or n/a."""
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def markdown(result: dict[str, Any]) -> str:
    """Tables for docs/benchmarks.md."""
    env, s = result["environment"], result["settings"]
    where = env["card"] or f"{env['cpu']} CPU ({env['cpu_count']} cores), no GPU"
    lines = [
        f"GPU check ({'--cpu' if result['mode'] == 'cpu' else 'GPU'} mode), {env['date']}: {where}, driver "
        f"{env['driver'] or 'n/a'}, torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), "
        f"peak bf16 {fmt(env['peak_bf16_tflops'], '.0f')} TFLOP/s.",
        "",
    ]
    tests = result["pytest_cuda"]
    if "returncode" in tests:
        lines += [f"`pytest -m cuda`: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped, "
                  f"{tests['errors']} errors ({tests['seconds']:.0f} s).", ""]  # fmt: skip
    if result["resnet"]:
        lines += [
            f"| {s['arch']}, {s['size']} px, batch {s['batch']}, {s['precision']}, channels_last | images/s | vs "
            "hand loop | MFU |",
            "|---|---|---|---|",
        ]
    labels = {"hand": "hand-written loop", "trainer": "visionkit trainer", "torchrun": "trainer, torchrun (1 proc)"}
    for name, case in result["resnet"].items():
        kind, tag = name.rsplit("_", 1)
        label = f"{labels[kind]}, {tag}"
        if "error" in case:
            lines.append(f"| {label} | failed | | |")
            continue
        lines.append(f"| {label} | {fmt(case.get('images_per_s'))} | {fmt(case.get('vs_hand'), '.3f')} | "
                     f"{fmt(case.get('mfu_percent'), '.1f', '%')} |")  # fmt: skip
        if case.get("resident_images_per_s"):
            lines.append(f"| {label}, batch kept on the device | {fmt(case['resident_images_per_s'])} | | "
                         f"{fmt(case.get('resident_mfu_percent'), '.1f', '%')} |")  # fmt: skip
    if result["tasks"] or result["gan_fp16"]:
        lines += ["", "| run | precision | steps | images/s | losses finite | seconds |", "|---|---|---|---|---|---|"]
    for name, run in {**result["tasks"], "gen/dcgan.yaml, fp16-mixed": result["gan_fp16"]}.items():
        if not run:
            continue
        if "error" in run:
            lines.append(f"| {name} | failed: {run['error'].splitlines()[0][:80]} | | | | |")
            continue
        lines.append(f"| {name} | {run['precision']} | {run['steps']} | {fmt(run['images_per_s'])} | "
                     f"{'yes' if run['losses_finite'] else 'NO'} | {run['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the check; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the CPU-safe parts, tiny (no cuda tests, no NCCL)")
    parser.add_argument("--out", help="write the summary JSON here (and the markdown next to it, .md)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, for cards not in the table")
    parser.add_argument("--model", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int, help="timed steps after the warm-up")
    parser.add_argument("--task-steps", type=int)
    parser.add_argument("--no-compile", action="store_true", help="time eager mode only")
    parser.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)} (default: all; with "
                        "--cpu all but tests and torchrun, which then uses gloo)")  # fmt: skip
    parser.add_argument("--work-dir", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        print("error: no CUDA GPU is visible here (torch.cuda.is_available() is False). This check measures a GPU; "
              "run it on a machine with one, or pass --cpu to run its CPU-safe parts.", file=sys.stderr)  # fmt: skip
        return 2
    s = dict(CPU if args.cpu else GPU)
    s.update({k: v for k, v in (("batch", args.batch), ("steps", args.steps), ("task_steps", args.task_steps)) if v})
    chosen = args.sections.split(",") if args.sections else [x for x in SECTIONS if not args.cpu or x in CPU_SECTIONS]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.cpu and "tests" in chosen:
        parser.error("--sections tests needs a GPU: the cuda tests skip without one")
    args.sections = chosen
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:
        torch.set_num_threads(1)  # tiny models: a second thread only spins, and stalls on a busy machine
    parts.register_components()
    env = environment(cuda and not args.cpu, peak_tflops(torch.cuda.get_device_name(0) if cuda else None,
                                                         args.peak_tflops))  # fmt: skip
    say(f"{env['card'] or env['cpu']}  driver {env['driver']}  torch {env['torch']}  CUDA {env['cuda']}")
    result: dict[str, Any] = {"mode": "cpu" if args.cpu else "gpu", "environment": env, "settings": s}
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        result["pytest_cuda"] = {"skipped": "--cpu: no GPU" if args.cpu else "not in --sections"}
        if "tests" in args.sections:
            say("[tests] pytest -m cuda")
            result["pytest_cuda"] = guarded("pytest -m cuda", run_cuda_tests)
        s["flops_per_image"] = flops_per_image(s["arch"], s["size"])
        result["resnet"] = resnet_cases(args, s, device, work)
        add_ratios(result["resnet"], s["flops_per_image"], env["peak_bf16_tflops"])
        result["tasks"], result["gan_fp16"] = task_runs(args, s, work)
    result["problems"] = problems(result)
    result["ok"] = not result["problems"]
    table = markdown(result)
    say("\n" + table)
    for line in result["problems"]:
        say(f"problem: {line}")
    say("all checks passed" if result["ok"] else f"{len(result['problems'])} problem(s)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        Path(args.out).with_suffix(".md").write_text(table)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
