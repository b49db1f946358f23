"""`make docs-check` reads docs/finetune.md's own config and command blocks (the full check runs there, not in
the suite: it trains for about seven minutes)."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT


def test_the_docs_check_finds_the_pages_configs_and_commands() -> None:
    spec = importlib.util.spec_from_file_location("docs_finetune", ROOT / "benchmarks" / "docs_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.PAGE.read_text()
    configs = [b.splitlines()[0] for b in module.blocks(text, "yaml") if b.startswith("# ")]
    assert configs == ["# my_digits.yaml", "# space.yaml"]
    commands = [line for b in module.blocks(text, "bash") for line in b.strip().splitlines()]
    assert len(commands) == 10 and all(c.startswith("python ") for c in commands)
    assert "suggested lr: 0.00132" in text  # the figure `make docs-check` printed on the page's machine
