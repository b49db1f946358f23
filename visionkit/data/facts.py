"""Data facts: what the data tells the model and the tools (classes, channels, size, normalisation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visionkit.config import FACT_KEYS
from visionkit.errors import ConfigError, DataError


@dataclass
class DataFacts:
    """A typed record of data facts, offered to model builders and saved in checkpoints beside the config."""

    class_names: list[str] | None = None
    num_classes: int | None = None
    channels: int | None = None
    image_size: int | None = None
    category_ids: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific facts (plain JSON-able values)

    def __post_init__(self) -> None:
        if self.class_names is not None:
            self.class_names = [str(n) for n in self.class_names]
            if self.num_classes is None:
                self.num_classes = len(self.class_names)
        if self.category_ids is not None:
            self.category_ids = [int(i) for i in self.category_ids]
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, [float(v) for v in value])

    @property
    def names(self) -> list[str]:
        """Class names, or class_<i> for each of num_classes when the data names none."""
        if self.class_names:
            return list(self.class_names)
        return [f"class_{i}" for i in range(self.num_classes or 0)]

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (safe for `torch.load(weights_only=True)` and JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DataFacts:
        """Rebuild from `to_dict` output (or from a `data:` config section: unknown keys are ignored)."""
        data = data or {}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})

    def merged(self, other: DataFacts) -> DataFacts:
        """A copy with every unset fact of self taken from `other` (extra mappings merged, self first)."""
        values = {f: getattr(self, f) if getattr(self, f) is not None else getattr(other, f) for f in FACT_KEYS}
        return DataFacts(**values, extra={**other.extra, **self.extra})

    def replace(self, **changes: Any) -> DataFacts:
        """A copy with some facts changed."""
        return dataclasses.replace(self, **changes)


def facts_of(dataset: Any) -> DataFacts:
    """Facts a dataset tells: its `facts()` method, else its classes/class_names, channels, image_size, ids."""
    if dataset is None:
        return DataFacts()
    if callable(getattr(dataset, "facts", None)):
        return dataset.facts()
    names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
    ids = getattr(dataset, "category_ids", None)
    size = getattr(dataset, "image_size", None)
    return DataFacts(
        class_names=list(names) if names else None,
        channels=getattr(dataset, "channels", None),
        image_size=size if isinstance(size, int) else None,
        category_ids=list(ids) if ids is not None else None,
    )


def declared_facts(data_cfg: Mapping[str, Any]) -> DataFacts:
    """Facts the user declared under `data:` (keys that are set), checked: a ConfigError names a bad one."""
    values = {k: data_cfg.get(k) for k in FACT_KEYS}
    for key, value in values.items():
        if value is not None and not _valid_fact(key, value):
            raise ConfigError(f"data.{key} is {value!r}; expected {FACT_SHAPES[key]} (or null: from the data).")
    return DataFacts.from_dict(values)


FACT_SHAPES = {
    "class_names": "a list of class names",
    "num_classes": "a positive integer",
    "channels": "a positive integer (1 grey, 3 RGB)",
    "image_size": "a positive integer",
    "category_ids": "a list of distinct integers",
    "mean": "a flat list of numbers (one, or one per channel)",
    "std": "a flat list of positive numbers (one, or one per channel)",
}


def _valid_fact(key: str, value: Any) -> bool:
    number = (int, float)
    if key in ("num_classes", "channels", "image_size"):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if not isinstance(value, list) or not value:
        return False
    if key == "class_names":
        return all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
    if key == "category_ids":
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value) and len(set(value)) == len(value)
    ok = all(isinstance(v, number) and not isinstance(v, bool) for v in value)
    return ok and (key == "mean" or all(v > 0 for v in value))


def resolve_facts(declared: DataFacts, train: DataFacts, val: DataFacts | None = None) -> DataFacts:
    """Declared facts win; the training data fills the rest; disagreements are errors naming the key."""
    for split, found in (("train", train), ("val", val)):
        if found is None:
            continue
        counts = (declared.num_classes, found.num_classes)
        if None not in counts and counts[0] != counts[1]:
            raise DataError(
                f"data.num_classes is {declared.num_classes} but data.{split} defines {found.num_classes} classes "
                f"{(found.class_names or [])[:10]}. Set data.num_classes: {found.num_classes} or null (from the data)."
            )
        if declared.class_names and found.class_names and declared.class_names != found.class_names:
            raise DataError(
                f"data.class_names {declared.class_names} differ from the classes of data.{split}: {found.class_names}."
            )
    facts = declared.merged(train)
    if val is not None and val.class_names and facts.class_names and val.class_names != facts.class_names:
        raise DataError(
            f"data.val classes {val.class_names[:10]} differ from data.train classes {facts.class_names[:10]}; "
            "both splits must define the same classes in the same order."
        )
    if val is not None and val.channels and train.channels and val.channels != train.channels:
        raise DataError(
            f"data.val images have {val.channels} channel(s) but data.train images have {train.channels}: the model "
            f"cannot take both. Set data.channels={max(train.channels, val.channels)} (or 1) to convert the images "
            "of both splits, or give both splits the same kind of images."
        )
    for key in ("mean", "std"):
        values = getattr(facts, key)
        if values is not None and facts.channels and len(values) not in (1, facts.channels):
            raise ConfigError(
                f"data.{key} has {len(values)} numbers but the images have {facts.channels} channel(s); give one "
                f"number, or one per channel (data.{key}: {[round(values[0], 4)] * facts.channels})."
            )
    return facts


def facts_kwargs(facts: DataFacts) -> dict[str, Any]:
    """The data facts as keyword arguments offered to builders (a builder takes the ones it names)."""
    return {
        "num_classes": facts.num_classes,
        "class_names": facts.names if facts.num_classes else facts.class_names,
        "channels": facts.channels,
        "in_chans": facts.channels,
        "image_size": facts.image_size,
        "category_ids": facts.category_ids,
        "mean": facts.mean,
        "std": facts.std,
        **facts.extra,
    }
