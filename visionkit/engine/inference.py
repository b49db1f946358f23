"""A trained model for inference: the task and model of a checkpoint, rebuilt from what the checkpoint holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionkit.config import load_config
from visionkit.data.facts import DataFacts, declared_facts
from visionkit.engine.checkpoint import inference_weights, load_checkpoint
from visionkit.engine.contracts import Task
from visionkit.engine.precision import autocast_factory, resolve_precision, select_device
from visionkit.engine.protocol import build_task
from visionkit.engine.weights import load_model_weights, skip_pretrained
from visionkit.errors import ConfigError
from visionkit.registry import DATASETS, LOSSES, MODELS


def load_model(
    checkpoint: str | Path, overrides: Sequence[str] = (), device: str | None = None
) -> tuple[Task, nn.Module, dict[str, Any]]:
    """Rebuild the task and model of a checkpoint (EMA weights when kept), on a device, in eval mode.

    The task's `facts` are the data facts saved with the checkpoint; thread counts are left alone.
    """
    ckpt = load_checkpoint(checkpoint)
    try:
        # The checkpoint's plugins are information: loading it never imports or calls them.
        where = f"Checkpoint '{checkpoint}'"
        cfg = load_config(ckpt["config"], list(overrides), source=where, plugin_info=_recorded(ckpt))
        task = build_task(cfg)
        # Checkpoints before format 2 kept the data facts in their config's data section.
        task.facts = DataFacts.from_dict(ckpt.get("facts") or declared_facts(ckpt["config"].get("data", {})).to_dict())
        with skip_pretrained():  # the checkpoint's weights replace them: no cache or network needed
            model = task.build_model(task.facts)
    except ConfigError as exc:
        hint = origin_hint(str(exc), ckpt.get("components") or {})
        if not hint:
            raise
        raise ConfigError(f"{exc}{hint}") from None
    dev = select_device(device or cfg["trainer"]["device"])
    load_model_weights(model, inference_weights(ckpt), checkpoint)
    model.to(dev).eval()
    task.setup(model, dev)
    return task, model, cfg


def _recorded(ckpt: Mapping[str, Any]) -> list[Any]:
    """What a checkpoint recorded of its plugins (spec, module, distribution); older checkpoints record nothing."""
    recorded = ckpt.get("plugins")
    return list(recorded) if isinstance(recorded, list) else []


def run_autocast(cfg: Mapping[str, Any], device: torch.device) -> Any:
    """The autocast factory of a run's `trainer.precision` on `device`."""
    return autocast_factory(resolve_precision(cfg["trainer"]["precision"], device), device)


def component_origins(cfg: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Where the run's model, datasets and loss were defined: {role: {name, module, file}} (file for a script)."""
    import sys

    task = cfg.get("task")
    found: dict[str, dict[str, str]] = {}
    roles = {"model": (MODELS, cfg.get("model")), "loss": (LOSSES, cfg.get("loss"))}
    data = cfg.get("data") or {}
    roles.update({f"data.{s}": (DATASETS, data.get(s)) for s in ("train", "val")})
    for role, (registry, spec) in roles.items():
        name = spec.get("name") if isinstance(spec, Mapping) else None
        if not isinstance(name, str):
            continue
        try:
            module = registry.entry(name, [task] if task else None).module
        except Exception:  # noqa: BLE001 - a record of origins must never stop a checkpoint
            continue
        record = {"name": name, "module": module}
        script = getattr(sys.modules.get(module), "__file__", None) if module == "__main__" else None
        if script:
            record["file"] = str(Path(script).resolve())
        found[role] = record
    return found


def origin_hint(message: str, components: Mapping[str, Any]) -> str:
    """For an 'Unknown ...' error on load: which module defined that component when the run was trained."""
    if not message.startswith("Unknown "):
        return ""
    for role, record in components.items():
        if isinstance(record, Mapping) and f"'{record.get('name')}'" in message:
            module = record.get("module", "")
            if module == "__main__":
                where = f"the script {record.get('file', '(unknown)')}"
                return (
                    f" The checkpoint's {role} '{record['name']}' was registered by {where}: move the "
                    "registration into a module and pass --plugin MODULE (or import it before loading)."
                )
            return (
                f" The checkpoint's {role} '{record['name']}' was defined in module '{module}': pass "
                f"--plugin {module} (or import it before loading)."
            )
    return ""
