"""PersistentMemory: learned tokens prepended to a sequence (paper eq. 19)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_blocks.persistent import PersistentMemory

FAST = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FAST
@given(
    num_tokens=st.integers(0, 6),
    batch=st.integers(1, 3),
    seq=st.integers(0, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_prepends_the_same_tokens_to_every_sequence(device, num_tokens, batch, seq, seed):
    torch.manual_seed(seed)
    pm = PersistentMemory(num_tokens, 5, init_std=1.0).to(device=device, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, 5, generator=g, dtype=torch.float64).to(device)
    out = pm(x)
    assert out.shape == (batch, num_tokens + seq, 5)
    torch.testing.assert_close(out[:, num_tokens:], x, rtol=0, atol=0)
    for b in range(batch):
        torch.testing.assert_close(out[b, :num_tokens], pm.memory, rtol=0, atol=0)
    torch.testing.assert_close(pm.tokens(batch), out[:, :num_tokens], rtol=0, atol=0)


def test_tokens_are_input_independent_and_learn():
    pm = PersistentMemory(3, 4)
    a, b = pm(torch.randn(2, 5, 4)), pm(torch.randn(2, 5, 4))
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)
    pm(torch.randn(2, 5, 4)).pow(2).sum().backward()
    assert pm.memory.grad is not None and pm.memory.grad.abs().sum() > 0


def test_zero_tokens_is_identity():
    pm = PersistentMemory(0, 4)
    x = torch.randn(2, 3, 4)
    assert pm(x) is x
    assert pm.tokens(2).shape == (2, 0, 4)


def test_init_std_and_validation():
    torch.manual_seed(0)
    pm = PersistentMemory(2000, 16, init_std=0.02)
    assert abs(pm.memory.std().item() - 0.02) < 1e-3
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        PersistentMemory(-1, 4)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        PersistentMemory(1, 0)
    with pytest.raises(ValueError, match=r"expected \(batch, seq, 4\)"):
        PersistentMemory(1, 4)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="float64"):
        PersistentMemory(1, 4)(torch.randn(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch must be >= 1"):
        PersistentMemory(1, 4).tokens(0)
