"""MAGBlock: SWA and the memory side by side over [persistent | x], gated (eqs. 26-28)."""

from __future__ import annotations

import pytest
import torch

from memory_blocks.attention import SlidingWindowAttention
from memory_blocks.layers.feedforward import SwiGLU
from memory_blocks.layers.norm import RMSNorm
from memory_blocks.neural_memory import NeuralMemory
from memory_blocks.persistent import PersistentMemory
from titans import MAGBlock, NormalizedGate

DIM, P = 8, 2


def block(device: torch.device, num_prefix: int = P) -> MAGBlock:
    torch.manual_seed(0)
    return MAGBlock(
        attention=SlidingWindowAttention(DIM, 2, window=3, num_prefix=num_prefix),
        memory=NeuralMemory(DIM, heads=2, chunk_size=2),
        persistent=PersistentMemory(P, DIM),
        combine=NormalizedGate(DIM),
        norm=RMSNorm(DIM),
        feedforward=SwiGLU(DIM, 16),
        ffn_norm=RMSNorm(DIM),
    ).to(device=device, dtype=torch.float64)


def test_matches_the_equations(device):
    b = block(device)
    x = torch.randn(2, 7, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    out, _ = b(x)
    x_tilde = torch.cat([b.persistent.tokens(2), b.norm(x)], dim=1)  # eq. 26
    y, _ = b.attention(x_tilde)  # eq. 27
    m, _ = b.memory(x_tilde)
    o = b.combine(y, m)[:, P:]  # eq. 28
    h = x + o
    torch.testing.assert_close(out, h + b.feedforward(b.ffn_norm(h)))


def test_persistent_tokens_enter_once(device):
    b = block(device)
    x = torch.randn(1, 5, DIM, dtype=torch.float64, device=device)
    _, state = b(x[:, :2])
    assert state.attention.prefix_k.shape[2] == P
    assert state.attention.position == P + 2
    _, state = b(x[:, 2:], state)
    assert state.attention.position == P + 5


def test_rejects_a_prefix_that_is_not_the_persistent_tokens():
    with pytest.raises(ValueError, match="num_prefix"):
        block(torch.device("cpu"), num_prefix=0)
