"""Discovery: `visionkit list` filters by pattern and lists timm's architectures; unknown model names suggest
timm's (issue 21)."""

from __future__ import annotations

import re

import pytest
import timm

from tests.conftest import run_tool
from visionkit.errors import ConfigError
from visionkit.registry import MODELS


def test_a_timm_pattern_lists_timms_matching_models_with_parameters() -> None:
    proc = run_tool("list", "--task", "cls", "timm/*resnet*", "--limit", "4")
    assert proc.returncode == 0, proc.stderr
    expected = timm.list_models("*resnet*")
    listed = re.findall(r"^  (timm/\S+)\s+([\d.]+) M", proc.stdout, re.M)
    assert [name for name, _ in listed] == [f"timm/{n}" for n in expected[:4]]
    assert f"({len(expected)};" in proc.stdout and f"and {len(expected) - 4} more" in proc.stdout
    resnet = run_tool("list", "timm/resnet18")
    assert re.search(r"timm/resnet18\s+11\.69 M\s+224 px\s+pretrained: a1_in1k", resnet.stdout), resnet.stdout
    none = run_tool("list", "timm/nothing_like_this*")
    assert none.returncode == 2 and "no model matching" in none.stderr


def test_a_plain_pattern_filters_the_registry() -> None:
    proc = run_tool("list", "--task", "det", "*yolo*")
    assert proc.returncode == 0 and "  yolo " in proc.stdout and "fcos" not in proc.stdout


@pytest.mark.parametrize(
    ("name", "suggested"), [("resnet18", "timm/resnet18"), ("convnext_tinyy", "timm/convnext_tiny")]
)
def test_an_unknown_model_suggests_timm_names(name: str, suggested: str) -> None:
    import visionkit.tasks.classification.models  # noqa: F401 - registers the timm namespace

    with pytest.raises(ConfigError, match=f"Did you mean '{suggested}'"):
        MODELS.entry(name, ["classification"])
