"""LMMBlock and AttentionBlock: the memory alone, attention alone."""

from __future__ import annotations

import torch

from memory_blocks.attention import SlidingWindowAttention
from memory_blocks.layers.feedforward import SwiGLU
from memory_blocks.layers.norm import RMSNorm
from memory_blocks.neural_memory import NeuralMemory
from memory_blocks.persistent import PersistentMemory
from titans import AttentionBlock, LMMBlock

DIM, P = 8, 2


def _x(device):
    return torch.randn(2, 6, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)


def test_lmm_is_the_memory_over_persistent_then_tokens(device):
    torch.manual_seed(0)
    b = LMMBlock(
        memory=NeuralMemory(DIM, heads=2, chunk_size=2),
        persistent=PersistentMemory(P, DIM),
        norm=RMSNorm(DIM),
        feedforward=SwiGLU(DIM, 16),
        ffn_norm=RMSNorm(DIM),
    ).to(device=device, dtype=torch.float64)
    x = _x(device)
    out, _ = b(x)
    m, _ = b.memory(torch.cat([b.persistent.tokens(2), b.norm(x)], dim=1))
    h = x + m[:, P:]
    torch.testing.assert_close(out, h + b.feedforward(b.ffn_norm(h)))


def test_attention_block_is_swa_over_persistent_then_tokens(device):
    torch.manual_seed(0)
    b = AttentionBlock(
        attention=SlidingWindowAttention(DIM, 2, window=3, num_prefix=P),
        persistent=PersistentMemory(P, DIM),
        norm=RMSNorm(DIM),
        feedforward=SwiGLU(DIM, 16),
        ffn_norm=RMSNorm(DIM),
    ).to(device=device, dtype=torch.float64)
    x = _x(device)
    out, state = b(x)
    y, _ = b.attention(torch.cat([b.persistent.tokens(2), b.norm(x)], dim=1))
    h = x + y[:, P:]
    torch.testing.assert_close(out, h + b.feedforward(b.ffn_norm(h)))
    assert state.attention.k.shape[2] == 2  # window - 1 recent keys
