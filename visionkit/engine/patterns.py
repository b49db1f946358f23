"""Parameter-name patterns, shared by `model.freeze` and `optimizer.param_groups`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from visionkit.errors import did_you_mean


def name_matches(name: str, patterns: str | Iterable[str]) -> bool:
    """Whether a parameter name matches a fnmatch-style pattern, or lies under a module named by one."""
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return any(fnmatchcase(name, p) or fnmatchcase(name, p + ".*") for p in patterns)


def unmatched_pattern_message(key: str, pattern: str, names: Sequence[str]) -> str:
    """A ConfigError message for a pattern that matches no parameter, with nearby and sample names."""
    modules = sorted({n.rsplit(".", i)[0] for n in names for i in range(1, n.count(".") + 1)})
    hint = did_you_mean(pattern.rstrip("*").rstrip("."), [*modules, *names])
    sample = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return (
        f"{key} pattern {pattern!r} matches no parameter of the model.{hint} Patterns are fnmatch-style over "
        f"parameter names (e.g. 'features.*') or a module name (e.g. 'features'); the names are: {sample}."
    )
