"""YAML configs: `_base_` inheritance, dotted overrides, validation against a schema, and dumping."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from visionkit.errors import ConfigError, did_you_mean
from visionkit.plugins import import_plugin, require_loaded
from visionkit.registry import TASKS
from visionkit.yaml_reader import yaml_load

# The default configs live in configs/ at the repository root and ship inside the package as
# visionkit/configs (setup.py maps one to the other). A regular install or wheel has the packaged copy;
# a source checkout or editable install has none, so the repository-root folder is used instead.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_ROOT = _PACKAGED_CONFIGS if _PACKAGED_CONFIGS.is_dir() else Path(__file__).resolve().parent.parent / "configs"

# Config keys under `data:` that declare a data fact (a user may set them; the data fills what is left).
# They are the fields of `visionkit.data.facts.DataFacts` (a test keeps the two in step).
FACT_KEYS = ("class_names", "num_classes", "channels", "image_size", "category_ids", "mean", "std")

# The schema of every task: a default for each key. A mapping with a `name` key is a component spec
# whose other keys are checked against the builder's signature; other mappings are closed.
BASE_DEFAULTS: dict[str, Any] = {
    "task": None,
    "plugins": [],
    "work_dir": None,
    "model": {"name": None},
    "data": {
        "batch_size": 32,  # or "auto" (visionkit/engine/batching.py)
        "effective_batch_size": None,  # samples per update: sets trainer.accumulate from the (auto) batch size
        "sampler": None,  # null (shuffle) or "balanced" (class-balanced sampling)
        "num_workers": 2,
        "train": None,
        "val": None,
        "train_transforms": [],
        "val_transforms": [],
        # Data facts a user may declare (null: from the data); see visionkit/data/facts.py.
        **{key: None for key in FACT_KEYS},
    },
    "loss": None,
    "metrics": [],
    "callbacks": [],
    # decay_norm_and_bias false: biases and norm weights get no weight decay (visionkit/engine/optim.py)
    "optimizer": {"name": "adamw", "lr": 1e-3, "decay_norm_and_bias": False},
    "scheduler": {"name": "cosine", "warmup_steps": 0},
    "trainer": {
        "epochs": 10,
        "max_steps": None,
        "precision": "auto",
        "device": "auto",
        "seed": 0,
        "accumulate": 1,
        "clip_grad": None,
        "ema": None,
        "val_every": 1,
        "early_stop_patience": None,
        "unfreeze_at": None,  # epoch at which `model.freeze` patterns are trained again
        "log_every": 20,
        "checkpoint_every": None,
        "channels_last": False,
        "compile": False,
        "progress": True,
        "max_bad_steps": 5,
        "finite_check": "auto",  # when a non-finite loss is caught: auto, update (exact skip) or log (engine/update.py)
        "num_threads": None,
        "dist_timeout": 600,  # seconds a collective may wait for a lost rank before the job fails (torchrun)
        "monitor": None,
        "monitor_mode": None,
    },
}

CHOICES = {
    "trainer.precision": ("auto", "fp32", "fp16-mixed", "bf16-mixed"),
    "trainer.finite_check": ("auto", "update", "log"),
}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


POSITIVE = {"trainer.accumulate", "trainer.val_every", "trainer.log_every", "trainer.epochs"}
NON_NEGATIVE = {"data.num_workers"}


# Specs whose options mostly carry over when the name changes (lr, weight_decay, warmup_steps).
SHARED_OPTION_SPECS = ("optimizer", "scheduler")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings merge key by key, anything else replaces.

    A mapping in `update` with `_delete_: true` replaces the base mapping instead of merging, and so
    does a component spec whose `name` differs from the base's (its options belong to the old builder).
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = out.get(key)
        renamed = (
            key not in SHARED_OPTION_SPECS
            and isinstance(value, Mapping)
            and isinstance(old, Mapping)
            and "name" in value
            and value["name"] != old.get("name")
        )
        if isinstance(value, Mapping) and (value.get("_delete_") or renamed):
            out[key] = {k: copy.deepcopy(v) for k, v in value.items() if k != "_delete_"}
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Packaged configs that moved: a user asking for the old name is told the new one.
RENAMED = {"det/yolo.yaml": "It is det/yolo_txt_format.yaml now (the YOLO recipes: det/yolo_n.yaml, yolo_s.yaml)."}


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file and resolve its `_base_` chain (relative to the file, else the packaged configs)."""
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"Config '{path}' inherits from itself through _base_: {cycle}. Remove one _base_ entry.")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.yaml"))[:5]
        raise ConfigError(
            f"Config '{path}' is a folder; pass a YAML file"
            + (f" inside it (e.g. {path / found[0]}; it holds {', '.join(found)})." if found else ", not a folder.")
        )
    if not path.is_file():
        renamed = next((f" {new}" for old, new in RENAMED.items() if path.as_posix().endswith(old)), "")
        raise ConfigError(
            f"Config file '{path}' does not exist.{renamed} Pass a YAML file, e.g. configs/cls/default.yaml "
            f"or cls/default.yaml (relative paths are also looked up in the default configs, {CONFIG_ROOT})."
        )
    try:
        data = yaml_load(_text_of(path), f"Config file '{path}'") or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping at the top level, got {type(data).__name__}.")
    bases = data.pop("_base_", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        candidate = path.parent / base  # relative to the file; else a packaged config such as cls/default.yaml
        if not candidate.is_file() and not Path(base).is_absolute() and (CONFIG_ROOT / base).is_file():
            candidate = CONFIG_ROOT / base
        merged = deep_merge(merged, read_yaml(candidate, (*_chain, path.resolve())))
    return deep_merge(merged, data)


def _text_of(path: Path) -> str:
    """A config file's text; a ConfigError for a file that is not text (e.g. a `_base_` naming a binary file)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Config file '{path}' is not a text file (byte {exc.start} is not UTF-8): a config is YAML text. "
            "Check the path (and any _base_ naming it)."
        ) from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn `key.sub=value` strings into a nested mapping; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*", key):
            raise ConfigError(f"Override '{item}' is not of the form key.sub=value (e.g. trainer.epochs=5).")
        if key in given:
            raise ConfigError(
                f"Override key '{key}' is given twice ('{given[key]}' and '{item}'); give each key once, with the "
                "value you want."
            )
        given[key] = item
        try:
            value = yaml_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override '{item}' conflicts with another override of '{part}'.")
        node[parts[-1]] = value
    return out


def find_config(path: str | Path) -> Path:
    """The config file a user named: the path itself, or, when it is relative and no such file exists from
    the working directory, the file of that name under the default configs, CONFIG_ROOT (`cls/default.yaml`)."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (CONFIG_ROOT / path).is_file():
        return CONFIG_ROOT / path
    return path


def task_config_path(task: str) -> Path:
    """Default config of a task, shipped in the package: CONFIG_ROOT/<short alias>/default.yaml
    (or CONFIG_ROOT/<name>/default.yaml), else the task class's `default_config` file."""
    entry = TASKS.entry(task)
    for folder in (*entry.aliases, entry.name):
        candidate = CONFIG_ROOT / folder / "default.yaml"
        if candidate.is_file():
            return candidate
    path = getattr(entry.obj, "default_config", None)
    if path and Path(path).is_file():
        return Path(path)
    raise ConfigError(f"Task '{entry.name}' has no default config; pass --config FILE.")


def load_config(
    config: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    task: str | None = None,
    *,
    source: str | None = None,
    plugin_info: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Load and merge a config and check it against the schema; returns a plain nested dict with every key present.

    Component specs (model, datasets, optimizer, ...) are the task's to check: `Task.validate`, which
    `visionkit.load_config` and every run call before building anything. The `plugins:` of a user's config and
    overrides are imported. A config read from a file people download (`source`, e.g. "checkpoint 'x.pt'") never
    imports or calls what it names: its plugins must be loaded already (`--plugin`, an installed entry point),
    else a PluginError says which flag to pass (`plugin_info`: what the file recorded of each plugin).
    """
    over = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    for plugin in plugin_list(over, "overrides"):
        import_plugin(plugin)
    if config is None:
        name = task or over.get("task")
        if not name:
            raise ConfigError("Give a task (--task cls|seg|det|gen) or a config file (--config FILE).")
        config = task_config_path(name)
    user = dict(config) if isinstance(config, Mapping) else read_yaml(find_config(config))
    user = deep_merge(user, over)
    if task is not None:
        if user.get("task") and TASKS.canonical(user["task"]) != TASKS.canonical(task):
            raise ConfigError(f"--task {task} does not match the config's task '{user['task']}'.")
        user["task"] = task
    if not user.get("task"):
        raise ConfigError("The config has no 'task' key; add e.g. `task: classification`.")
    check_finite(user)
    listed = plugin_list(user, source or "the config")
    if source is None:
        for plugin in listed:
            import_plugin(plugin)
    else:
        require_loaded(listed, source, plugin_info)
    task_cls = TASKS.get(user["task"])
    user["task"] = TASKS.canonical(user["task"])
    schema = deep_merge(BASE_DEFAULTS, getattr(task_cls, "defaults", {}))
    check_keys(user, schema, "")
    cfg = deep_merge(schema, user)
    check_values(cfg)
    return cfg


def check_finite(node: Any, prefix: str = "") -> None:
    """Refuse NaN and infinite numbers anywhere in a config (`loss.label_smoothing=.nan` used to switch it off)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"Config key '{prefix[:-1]}' is {node}; numbers in a config must be finite.")
    if isinstance(node, Mapping):
        for key, value in node.items():
            check_finite(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_finite(value, f"{prefix[:-1]}[{i}].")


def plugin_list(cfg: Mapping[str, Any], where: str) -> list[str]:
    """The `plugins:` entries of a config: a list of module (or module:function) names."""
    listed = cfg.get("plugins") or []
    if not isinstance(listed, list) or not all(isinstance(p, str) and p for p in listed):
        raise ConfigError(f"'plugins' in {where} must be a list of module names (e.g. [my_pkg.plugin]): {listed!r}.")
    return listed


def check_keys(user: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> None:
    """Reject keys not in the schema (closed mappings only), naming the nearest valid key."""
    for key, value in user.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(
                f"Unknown config key '{path}'.{did_you_mean(key, schema)} "
                f"Valid keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(schema))}."
            )
        expected = schema[key]
        if isinstance(expected, Mapping) and "name" not in expected:
            if not isinstance(value, Mapping):
                raise ConfigError(f"Config key '{path}' must be a mapping, got {value!r}.")
            check_keys(value, expected, path + ".")
        elif path == "data.batch_size":
            pass  # a positive integer or "auto": check_values
        elif path == "trainer.progress":
            if value not in (True, False, "always"):
                raise ConfigError(
                    f"Config key 'trainer.progress' is {value!r}; accepted: true (on a terminal), false, always."
                )
        elif expected is not None and value is not None and not isinstance(expected, Mapping):
            check_type(path, value, expected)


def check_type(path: str, value: Any, expected: Any) -> None:
    """Check a value's type against the schema default's type (ints are accepted for floats)."""
    ok_types: tuple[type, ...]
    if isinstance(expected, bool):
        ok_types = (bool,)
    elif isinstance(expected, (int, float)):
        ok_types = (int, float)
        if isinstance(value, bool):
            ok_types = ()
    elif isinstance(expected, str):
        ok_types = (str,)
    elif isinstance(expected, list):
        ok_types = (list,)
    else:
        return
    if not isinstance(value, ok_types):
        raise ConfigError(
            f"Config key '{path}' has value {value!r} ({type(value).__name__}); "
            f"expected {type(expected).__name__} like {expected!r}."
        )


def get(cfg: Mapping[str, Any], dotted: str) -> Any:
    """Read `a.b.c` from a nested mapping (None when missing)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def check_values(cfg: Mapping[str, Any]) -> None:
    """Check enumerations, devices and numeric ranges of the shared keys."""
    for key, choices in CHOICES.items():
        if get(cfg, key) not in choices:
            raise ConfigError(
                f"Config key '{key}' is {get(cfg, key)!r}; accepted values: {', '.join(choices)}."
                + did_you_mean(str(get(cfg, key)), choices)
            )
    device = str(get(cfg, "trainer.device"))
    if not DEVICE_PATTERN.match(device):
        raise ConfigError(f"Config key 'trainer.device' is {device!r}; accepted: auto, cpu, cuda, cuda:N, mps.")
    for key in POSITIVE:
        if not isinstance(get(cfg, key), int) or get(cfg, key) < 1:
            raise ConfigError(f"Config key '{key}' must be a positive integer, got {get(cfg, key)!r}.")
    batch = get(cfg, "data.batch_size")
    if batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(
            f"Config key 'data.batch_size' must be a positive integer or 'auto' (chosen by a trial on the device), "
            f"got {batch!r}."
        )
    if get(cfg, "data.sampler") not in (None, "balanced"):
        raise ConfigError(
            f"Config key 'data.sampler' is {get(cfg, 'data.sampler')!r}; accepted: null (shuffle every sample once "
            "per epoch) or balanced (class-balanced sampling with replacement)."
        )
    for key in NON_NEGATIVE:
        if not isinstance(get(cfg, key), int) or get(cfg, key) < 0:
            raise ConfigError(f"Config key '{key}' must be an integer >= 0, got {get(cfg, key)!r}.")
    optional_positive = ("trainer.max_steps", "trainer.early_stop_patience", "trainer.checkpoint_every")
    for key in (*optional_positive, "trainer.num_threads", "trainer.dist_timeout", "data.effective_batch_size"):
        value = get(cfg, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"Config key '{key}' must be a positive integer or null, got {value!r}.")
    if get(cfg, "trainer.monitor_mode") not in (None, "min", "max"):
        raise ConfigError(
            f"Config key 'trainer.monitor_mode' is {get(cfg, 'trainer.monitor_mode')!r}; accepted: min, max, or null "
            "(the task's default)."
        )
    monitor = get(cfg, "trainer.monitor")
    if monitor is not None and (not isinstance(monitor, str) or not monitor.startswith("val/")):
        raise ConfigError(
            f"Config key 'trainer.monitor' must name a validation metric such as val/loss, got {monitor!r}."
        )
    ema = get(cfg, "trainer.ema")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 < ema < 1):
        raise ConfigError(f"Config key 'trainer.ema' must be a decay in (0, 1) such as 0.999, or null; got {ema!r}.")
    clip = get(cfg, "trainer.clip_grad")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(f"Config key 'trainer.clip_grad' must be a positive max-norm or null; got {clip!r}.")
    lr = get(cfg, "optimizer.lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"Config key 'optimizer.lr' must be a positive number, got {lr!r}.")


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
