"""Discovery: `visionkit list` filters by pattern and lists timm's architectures; unknown model names suggest
timm's (issue 21)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import timm

from tests.conftest import ROOT, run_tool
from visionkit.errors import ConfigError
from visionkit.registry import MODELS


def test_a_timm_pattern_lists_timms_matching_models_with_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    from visionkit.cli import main

    proc = run_tool("list", "--task", "cls", "timm/*resnet*", "--limit", "4")
    assert proc.returncode == 0, proc.stderr
    expected = timm.list_models("*resnet*")
    listed = re.findall(r"^  (timm/\S+)\s+([\d.]+) M", proc.stdout, re.M)
    assert [name for name, _ in listed] == [f"timm/{n}" for n in expected[:4]]
    assert f"({len(expected)};" in proc.stdout and f"and {len(expected) - 4} more" in proc.stdout
    assert main(["list", "timm/resnet18"]) == 0  # the rest in process: the same command, no start-up
    out = capsys.readouterr().out
    assert re.search(r"timm/resnet18\s+11\.69 M\s+224 px\s+pretrained: a1_in1k", out), out
    assert main(["list", "timm/nothing_like_this*"]) == 2
    assert "no model matching" in capsys.readouterr().err


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


def test_the_stored_catalog_matches_the_live_registries() -> None:
    from visionkit.cli.catalog import CATALOG, live_catalog

    assert json.loads(CATALOG.read_text()) == live_catalog(), (
        "visionkit/cli/catalog.json is stale: regenerate it with `python -m visionkit.cli.catalog`"
    )


FAST_LIST = """
import importlib.metadata as metadata, sys
metadata.entry_points = lambda **kwargs: []  # as on a machine without plugins installed
from visionkit.cli import main
main(["list", "--task", "det"])
print("torch imported:", "torch" in sys.modules)
"""


def test_list_without_plugins_answers_from_the_catalog_without_torch() -> None:
    fast = subprocess.run([sys.executable, "-c", FAST_LIST], capture_output=True, text=True, cwd=ROOT)
    assert fast.returncode == 0, fast.stderr
    assert fast.stdout.rstrip().endswith("torch imported: False")
    slow = run_tool("list", "--task", "det")  # plugins installed here: everything imported
    builtin = [line for line in slow.stdout.splitlines() if "origin=built-in" in line]
    assert [line for line in fast.stdout.splitlines() if "origin=" in line] == builtin
