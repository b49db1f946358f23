"""YAML as configs read it: safe, bounded in size and in what aliases expand to, no key given twice."""

from __future__ import annotations

import re
from typing import Any

import yaml

from visionkit.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; a megabyte is already far more than any real one
MAX_CONFIG_VALUES = 100_000  # values after YAML aliases are expanded (an alias bomb expands to billions)
MAX_CONFIG_DEPTH = 64  # nesting levels; a real config has four or five


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (plain YAML 1.1 reads it as a string) and refuses
    a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build a mapping; a duplicate key is a ConfigError naming it and its line."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key is not None and not isinstance(key, (str, int, float, bool)):
                raise ConfigError(
                    f"A mapping key on line {key_node.start_mark.line + 1} is a {type(key).__name__}; config keys are "
                    "names (or numbers), such as `epochs:`."
                )
            if key in seen:
                raise ConfigError(
                    f"The key '{key}' appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                    "YAML would silently keep the last one. Keep one of them."
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$|^[-+]?(\d+\.\d*|\.\d+)$"),
    list("-+0123456789."),
)


def yaml_load(text: str, source: str = "the config") -> Any:
    """Parse YAML text with the config loader, bounded in size and in what its aliases expand to."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(text)} bytes; a config may hold at most {MAX_CONFIG_BYTES} bytes.")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:  # a key given twice: say in which file
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"{source} nests lists or mappings too deeply to read; a config may nest at most {MAX_CONFIG_DEPTH} levels."
        ) from None
    _check_expanded_size(data, source)
    return data


def _check_expanded_size(data: Any, source: str) -> None:
    """Count values as a consumer would see them (aliases expanded); stop at MAX_CONFIG_VALUES."""
    stack, count = [(data, 1)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source} nests more than {MAX_CONFIG_DEPTH} levels of lists or mappings; flatten it.")
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{source} expands to more than {MAX_CONFIG_VALUES} values, usually YAML aliases (*name) repeated "
                "inside each other; write the values out or use fewer aliases."
            )
        if isinstance(item, dict):
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)
