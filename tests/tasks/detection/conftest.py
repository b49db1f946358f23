"""Detection tests run single-threaded: tiny models gain nothing from more threads on a busy 2-core box."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Use one intra-op thread for the test, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
