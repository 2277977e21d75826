"""A SwiGLU memory: ``f(W; x) = x + LN(W_down (silu(W_gate x) * W_up x))``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory_blocks.memories.base import MemoryModel
from memory_blocks.memories.mlp import check_expansion, fast_matrix, residual_norm

__all__ = ["GatedMLPMemory"]


class GatedMLPMemory(MemoryModel):
    """A gated (SwiGLU-style) MLP memory, by default in the residual-and-LayerNorm form.

    Fast weights ``w_gate``, ``w_up`` ``(hidden, dim)``, ``w_down`` ``(dim, hidden)`` with
    ``hidden = round(dim * expansion)``, and ``norm_weight`` ``(dim,)`` in the residual form.

    Args:
        dim: features of keys, values, queries and retrievals.
        expansion: hidden width as a multiple of ``dim``.
        residual_norm: the residual-and-LayerNorm form (on by default).
    """

    def __init__(self, dim: int, expansion: int | float = 2.0, *, residual_norm: bool = True) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"GatedMLPMemory: dim must be >= 1, got {dim}")
        check_expansion("GatedMLPMemory", dim, expansion)
        self.dim_in = self.dim_out = dim
        self.hidden = max(1, round(dim * expansion))
        self.residual_norm = residual_norm
        self.w_gate = fast_matrix(self.hidden, dim)
        self.w_up = fast_matrix(self.hidden, dim)
        self.w_down = fast_matrix(dim, self.hidden)
        if residual_norm:
            self.norm_weight = nn.Parameter(torch.ones(dim))

    def forward_ops(self, ops: Any, x: Tensor) -> Tensor:
        h = F.silu(ops.linear("w_gate", x)) * ops.linear("w_up", x)
        h = ops.linear("w_down", h)
        return residual_norm(ops, x, h) if self.residual_norm else h

    def curvature(self) -> float:
        """``8 hidden`` in the residual-LayerNorm form (power iteration at ``W_0`` measured the
        largest eigenvalue at up to 17 hidden for dim 16 and 4 hidden for dim 48), else
        ``4 hidden / dim``."""
        return 8.0 * self.hidden if self.residual_norm else 4.0 * self.hidden / self.dim_in

    def extra_repr(self) -> str:
        return f"dim={self.dim_in}, hidden={self.hidden}, residual_norm={self.residual_norm}"
