"""Fixtures of the titans tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny models run faster on one thread; on a loaded machine, two threads make the many
    small kernels (notably depthwise conv1d) wait on each other. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
