"""Shared test set-up: the `cuda` marker skips cleanly without a GPU; small helpers for runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `cuda` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated datasets go to a per-session temporary cache unless a test sets its own."""
    if "VISIONKIT_CACHE" not in os.environ:
        monkeypatch.setenv("VISIONKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a test (tiny models only spin on a second one), then the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_tool(
    tool: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run tools/<tool>.py in a subprocess and return the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / f"{tool}.py"), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def merged(*overrides: str) -> list[str]:
    """Overrides with each key once: a later `key=value` replaces an earlier one in its place (the CLI refuses
    a key given twice, so shared lists such as TINY_CLS are combined with a test's own settings through this)."""
    out: list[str] = []
    where: dict[str, int] = {}
    for item in overrides:
        key, sep, _ = item.partition("=")
        if sep and not item.startswith("-"):  # key=value; flags and their values pass through as they are
            if key in where:
                out[where[key]] = item
                continue
            where[key] = len(out)
        out.append(item)
    return out


# A classification config that trains in about a second: digits at 8x8, a narrow CNN.
TINY_DATA = [
    "data.image_size=8",
    "data.batch_size=32",
    "data.num_workers=0",
    "trainer.epochs=1",
    "trainer.log_every=2",
    "data.train_transforms=[]",
]
TINY_CLS = ["model.width=8", "model.depth=2", *TINY_DATA]
