"""Shared builders for the memory tests: memory models by name and random inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from memory_blocks import GatedMLPMemory, LinearMemory, MLPMemory, ModuleMemory

MEMORY_KINDS = ["linear", "linear_bias", "mlp1", "mlp2", "mlp3_plain", "gated", "module"]


def make_memory(kind: str, dim: int, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A memory model mapping ``dim -> dim`` with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    if kind == "linear":
        mem = LinearMemory(dim, dim, init_std=0.3)
    elif kind == "linear_bias":
        mem = LinearMemory(dim, dim, bias=True, init_std=0.3)
    elif kind == "mlp1":
        mem = MLPMemory(dim, depth=1)
    elif kind == "mlp2":
        mem = MLPMemory(dim, depth=2, expansion=2.0)
    elif kind == "mlp3_plain":
        mem = MLPMemory(dim, depth=3, expansion=1.5, activation="tanh", residual_norm=False)
    elif kind == "gated":
        mem = GatedMLPMemory(dim, expansion=1.5)
    elif kind == "module":
        mem = ModuleMemory(nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim)), dim, dim)
    else:
        raise AssertionError(kind)
    with torch.no_grad():
        for p in mem.parameters():  # move off the exact init values (ones, zeros)
            p.add_(0.1 * torch.randn(p.shape))
    return mem.to(dtype)


@dataclass
class Inputs:
    q: Tensor
    k: Tensor
    v: Tensor
    lr: Tensor
    momentum: Tensor | None
    decay: Tensor | None

    def args(self) -> tuple:
        return (self.q, self.k, self.v, self.lr, self.momentum, self.decay)

    def cut(self, s: int, e: int) -> Inputs:
        def c(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, :, s:e]

        return Inputs(c(self.q), c(self.k), c(self.v), c(self.lr), c(self.momentum), c(self.decay))


def _gate(g: torch.Generator, shape: tuple[int, ...], edges: bool, scale: float) -> Tensor:
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    if edges:  # about a quarter of the values at each edge
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        x = torch.where(u < 0.25, 0.0, torch.where(u > 0.75, 1.0, x))
    return x * scale


def make_inputs(
    seed: int,
    batch: int,
    heads: int,
    seq: int,
    dim: int,
    *,
    momentum: bool = True,
    decay: bool = True,
    edges: bool = True,
    lr_scale: float = 0.5,
    device: str | torch.device = "cpu",
) -> Inputs:
    """Random l2-normalised queries and keys, values, and gates (with edge values 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, seq, dim)
    q = nn.functional.normalize(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1)
    k = nn.functional.normalize(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    gs = (batch, heads, seq)
    out = Inputs(
        q, k, v,
        _gate(g, gs, edges, lr_scale),
        _gate(g, gs, edges, 1.0) if momentum else None,
        _gate(g, gs, edges, 1.0) if decay else None,
    )
    return Inputs(*(None if t is None else t.to(device) for t in (out.q, out.k, out.v, out.lr, out.momentum, out.decay)))


def assert_close(a: Tensor, b: Tensor, rtol: float = 1e-8) -> None:
    """Equal up to rounding, relative to the size of the values."""
    scale = max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


def assert_states_close(s1, s2, rtol: float = 1e-8) -> None:
    assert s1.offset == s2.offset
    assert set(s1.weights) == set(s2.weights)
    for n in s1.weights:
        assert_close(s1.weights[n], s2.weights[n], rtol)
        assert_close(s1.momentum[n].expand_as(s2.momentum[n]), s2.momentum[n], rtol)
    assert (s1.chunk_weights is None) == (s2.chunk_weights is None)
    if s1.chunk_weights is not None:
        for n in s1.chunk_weights:
            assert_close(s1.chunk_weights[n], s2.chunk_weights[n], rtol)
