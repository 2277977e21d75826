"""MALBlock: the memory layer, then sliding-window attention (eqs. 29-31)."""

from __future__ import annotations

import torch
from torch import nn

from memory_blocks.attention import SlidingWindowAttention
from memory_blocks.layers.feedforward import SwiGLU
from memory_blocks.layers.norm import RMSNorm
from memory_blocks.neural_memory import NeuralMemory
from memory_blocks.persistent import PersistentMemory
from titans import MALBlock

DIM, P = 8, 2


class Recorder(nn.Module):
    def __init__(self, log: list, name: str, inner: nn.Module) -> None:
        super().__init__()
        self.log, self.name, self.inner = log, name, inner

    def forward(self, x, *args, **kwargs):
        self.log.append(self.name)
        return self.inner(x, *args, **kwargs)


def test_memory_then_attention_as_the_equations_say(device):
    torch.manual_seed(0)
    b = MALBlock(
        memory=NeuralMemory(DIM, heads=2, chunk_size=2),
        attention=SlidingWindowAttention(DIM, 2, window=3, num_prefix=P),
        persistent=PersistentMemory(P, DIM),
        norm=RMSNorm(DIM),
        attention_norm=RMSNorm(DIM),
        feedforward=SwiGLU(DIM, 16),
        ffn_norm=RMSNorm(DIM),
    ).to(device=device, dtype=torch.float64)
    x = torch.randn(2, 6, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    out, state = b(x)
    s = torch.cat([b.persistent.tokens(2), x], dim=1)  # eq. 29
    s = s + b.memory(b.norm(s))[0]  # eq. 30
    s = s + b.attention(b.attention_norm(s))[0]  # eq. 31
    h = s[:, P:]
    torch.testing.assert_close(out, h + b.feedforward(b.ffn_norm(h)))

    log: list = []
    b.memory = Recorder(log, "memory", b.memory)
    b.attention = Recorder(log, "attention", b.attention)
    b(x[:, :1], state)
    assert log == ["memory", "attention"]
