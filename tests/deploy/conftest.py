"""Deploy tests run their tiny models on one torch thread (the shared `one_thread` fixture)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """Every test in tests/deploy uses one intra-op thread."""
