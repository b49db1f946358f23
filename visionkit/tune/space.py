"""Search spaces: a YAML file that maps config keys to distributions, checked against the config.

    optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    model.width: {type: int, low: 8, high: 32, step: 8}
    optimizer.name: {type: categorical, choices: [adamw, sgd]}

`float` and `int` take `low`, `high` and either `log: true` or a `step`; `categorical` takes `choices`
(numbers, strings, booleans or null). A bare list is short for a categorical.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionkit.config import load_config, yaml_load
from visionkit.engine.protocol import build_task
from visionkit.errors import ConfigError

KEY = re.compile(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*")
FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}


@dataclass(frozen=True)
class Distribution:
    """One searched config key: its kind and range (or choices)."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw a value with an Optuna trial."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def example(self) -> Any:
        """A value inside the range, to check the key against the config."""
        return self.choices[0] if self.type == "categorical" else self.low

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (as stored with the study)."""
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def _number(where: str, name: str, value: Any, integer: bool) -> float | int:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        expected = "an integer" if integer else "a finite number"
        raise ConfigError(f"{where}: '{name}' must be {expected}, got {value!r}.")
    return value


def parse_distribution(key: str, spec: Any, where: str) -> Distribution:
    """Check one entry of a space file and return its distribution."""
    where = f"{where}: key '{key}'"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where} must map to a distribution such as {{type: float, low: 1.0e-4, high: 0.1, log: true}}, "
            f"{{type: int, low: 8, high: 32, step: 8}} or {{type: categorical, choices: [adamw, sgd]}}; got {spec!r}."
        )
    kind = spec.get("type")
    if kind not in FIELDS:
        raise ConfigError(f"{where} has type {kind!r}; accepted types: float, int, categorical.")
    unknown = sorted(set(spec) - FIELDS[kind] - {"type"})
    if unknown:
        raise ConfigError(
            f"{where}: {kind} does not take {', '.join(unknown)}; it takes {', '.join(sorted(FIELDS[kind]))}."
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list, got {choices!r}.")
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        bad += [c for c in choices if isinstance(c, float) and not math.isfinite(c)]
        if bad:
            raise ConfigError(f"{where}: choices must be numbers, strings, booleans or null; got {bad[0]!r}.")
        return Distribution(key, kind, choices=tuple(choices))
    integer = kind == "int"
    for name in ("low", "high"):
        if name not in spec:
            raise ConfigError(f"{where}: {kind} needs 'low' and 'high'.")
    low, high = _number(where, "low", spec["low"], integer), _number(where, "high", spec["high"], integer)
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false, got {log!r}.")
    if low > high:
        raise ConfigError(f"{where}: low ({low}) is greater than high ({high}).")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log distribution needs low > 0, got low={low}.")
    if step is not None:
        step = _number(where, "step", step, integer)
        if step <= 0:
            raise ConfigError(f"{where}: 'step' must be positive, got {step}.")
        if log:
            raise ConfigError(f"{where}: give either 'log: true' or a 'step', not both.")
    return Distribution(key, kind, low, high, log, step)


def load_space(path: str | Path) -> dict[str, Distribution]:
    """Read and check a search-space YAML file (the keys are not checked against a config here)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space '{path}' does not exist; give a YAML file mapping config keys to distributions.")
    try:
        data = yaml_load(path.read_text())
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"--space '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            f"--space '{path}' must map config keys to distributions, e.g. "
            "`optimizer.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}`."
        )
    space = {}
    for key, spec in data.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise ConfigError(f"--space '{path}': {key!r} is not a dotted config key such as optimizer.lr.")
        space[key] = parse_distribution(key, spec, f"--space '{path}'")
    return space


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`: dotted keys as the nested overrides load_config merges."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def trial_config(base: Mapping[str, Any], values: Mapping[str, Any], work_dir: str | None = None) -> dict[str, Any]:
    """The base config with the searched values (and work_dir) set, validated like any config."""
    cfg = load_config(base, {**nested(values), "work_dir": work_dir})
    build_task(cfg)  # the components too: a searched `model.width` must be an option of the model
    return cfg


def check_space(base: Mapping[str, Any], space: Mapping[str, Distribution], path: str | Path) -> None:
    """Check every key of the space against the config: each one alone, at a value of its range."""
    for key, dist in space.items():
        prefix = key.split(".")[0]
        if prefix in ("work_dir", "task", "plugins"):
            raise ConfigError(f"--space '{path}': key '{key}' cannot be searched (it names the run, not a setting).")
        try:
            trial_config(base, {key: dist.example()})
        except ConfigError as exc:
            raise ConfigError(f"--space '{path}': key '{key}' does not fit the config: {exc}") from None
