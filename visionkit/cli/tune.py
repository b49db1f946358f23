"""`visionkit tune lr|sweep`: the command line of tools/tune.py (learning-rate range test, Optuna sweep)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from visionkit.cli.common import add_plugin_option, import_plugins, prog_name, run_command
from visionkit.errors import ConfigError

# Commands import the library inside their functions: `visionkit --help` must not pay for importing torch.

USAGE = """usage: tune.py {lr,sweep} ...

  lr     learning-rate range test: exponential lr ramp, smoothed loss, suggested lr, lr_find.png/json
  sweep  Optuna hyper-parameter search over config keys (--space SPACE.yaml --trials N), pruned from validation

`tune.py COMMAND --help` shows a command's options."""


def _common(p: argparse.ArgumentParser) -> None:
    """The options `lr` and `sweep` share."""
    p.add_argument("--task", help="task name or alias (cls, seg, det, gen, or a plugin's task)")
    p.add_argument("--config", help="YAML config (or give it as the first positional argument)")
    add_plugin_option(p)
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value", help="a config file, then key.sub=value overrides")


def _config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """A first positional without '=' is the config file; the rest are overrides."""
    rest = list(args.args)
    config = args.config
    if rest and "=" not in rest[0]:
        if config:
            raise ConfigError(f"Two configs given: --config {config} and {rest[0]}; give one.")
        config = rest.pop(0)
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise ConfigError(f"'{bad[0]}' is not an override of the form key.sub=value (e.g. trainer.epochs=5).")
    if config is None and not args.task:
        raise ConfigError("Give a config file (tune.py lr CONFIG.yaml) or a task (--task cls).")
    return config, rest


def lr_main(argv: Sequence[str] | None = None) -> int:
    """`tools/tune.py lr`: the learning-rate range test of a config; writes lr_find.png and lr_find.json."""
    p = argparse.ArgumentParser(
        prog=f"{prog_name('tune')} lr",
        description="Learning-rate range test: trains on successive batches with the lr growing exponentially "
        "from --min-lr to --max-lr, then restores the model. Suggests the lr of steepest loss descent.",
    )
    _common(p)
    p.add_argument("--out", help="output folder (default: runs/<task>/lr_find-<time>)")
    p.add_argument("--min-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--max-lr", type=float, default=10.0, help="last learning rate (default 10)")
    p.add_argument("--steps", type=int, default=100, help="optimizer updates in the test (default 100)")
    p.add_argument("--smoothing", type=float, default=0.9, help="moving-average factor of the loss (default 0.9)")
    p.add_argument("--diverge", type=float, default=4.0, help="stop when the smoothed loss passes this x its minimum")
    args = p.parse_intermixed_args(argv)

    def go() -> None:
        from visionkit.tune.lr_finder import find_lr

        import_plugins(args.plugin)
        config, overrides = _config_and_overrides(args)
        result, out = find_lr(
            config, overrides, task=args.task, out_dir=args.out, min_lr=args.min_lr, max_lr=args.max_lr,
            steps=args.steps, smoothing=args.smoothing, diverge=args.diverge,
        )  # fmt: skip
        print(f"range test: {len(result.lrs)} updates from lr {args.min_lr:g}; stopped: {result.stop_reason}")
        if result.suggestion is None:
            print("no suggestion: too few points; raise --steps or lower --min-lr")
        else:
            print(f"suggested lr: {result.suggestion:.3g} ({result.rule}); config optimizer.lr: {result.config_lr:g}")
            print(f"use it with: optimizer.lr={result.suggestion:.2g}")
        print(f"wrote {out / 'lr_find.png'} and {out / 'lr_find.json'}")

    return run_command(go)


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """`tools/tune.py sweep`: an Optuna study over config keys; resumes from its storage when re-run."""
    p = argparse.ArgumentParser(
        prog=f"{prog_name('tune')} sweep",
        description="Hyper-parameter sweep on Optuna (TPE sampler, median pruner fed from validation). Every trial is "
        "a run folder <out>/trial_<n>; re-running the same command resumes the study up to --trials in total.",
    )
    _common(p)
    p.add_argument("--space", required=True, help="YAML mapping config keys to distributions (float, int, categorical)")
    p.add_argument("--trials", type=int, required=True, help="trials the study should hold in total")
    p.add_argument("--storage", help="SQLAlchemy URL or sqlite file shared by workers (default: <out>/study.db)")
    p.add_argument("--study", help="study name (default: <task>-<config file stem>)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--out", help="output folder (default: runs/<task>/sweep-<study>)")
    p.add_argument("--seed", type=int, help="sampler seed (default: trainer.seed)")
    p.add_argument("--startup-trials", type=int, help="random trials before TPE models the space (default N/3, 2-10)")
    p.add_argument("--pruner", choices=["median", "none"], default="median", help="prune trials below the median")
    p.add_argument("--prune-startup", type=int, help="completed trials before pruning starts (default N/4, 2-5)")
    p.add_argument(
        "--prune-warmup", type=int, help="first epoch at which a trial may be pruned (default: a third of the epochs)"
    )
    args = p.parse_intermixed_args(argv)

    def go() -> None:
        from visionkit.tune.sweep import require_optuna, run_sweep

        for flag in ("trials", "jobs", "startup_trials", "prune_startup", "prune_warmup"):
            value, least = getattr(args, flag), 1 if flag in ("trials", "jobs") else 0
            if value is not None and value < least:
                raise ConfigError(f"--{flag.replace('_', '-')} must be an integer >= {least}, got {value}.")
        require_optuna()
        import_plugins(args.plugin)
        config, overrides = _config_and_overrides(args)
        run_sweep(
            config, overrides, args.space, args.trials, task=args.task, jobs=args.jobs, storage=args.storage,
            study=args.study, out_dir=args.out, seed=args.seed, startup_trials=args.startup_trials,
            pruner=args.pruner, prune_startup=args.prune_startup, prune_warmup=args.prune_warmup, plugins=args.plugin,
        )  # fmt: skip

    interrupted = False

    def guarded() -> None:
        nonlocal interrupted
        try:
            go()
        except KeyboardInterrupt:  # run_command's own message speaks of --resume; a sweep resumes by re-running
            interrupted = True

    status = run_command(guarded)
    if interrupted:
        print("interrupted; re-run the same command to resume the study", file=sys.stderr)
        return 130
    return status


def tune_main(argv: Sequence[str] | None = None) -> int:
    """`tools/tune.py lr|sweep ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"lr": lr_main, "sweep": sweep_main}
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
