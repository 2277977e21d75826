"""The deep memory: an MLP, by default in the residual form ``x + LN(W_L s(... W_1 x))``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory_blocks.functional.memorize_op.fused_block import ACTIVATIONS, FusedSpec
from memory_blocks.memories.activations import get_activation
from memory_blocks.memories.base import MemoryModel

__all__ = ["MAX_HIDDEN", "MLPMemory", "check_expansion", "residual_norm"]


def residual_norm(ops: Any, x: Tensor, h: Tensor) -> Tensor:
    """``x + LN(h) * g`` with a fast-weight gain ``g`` named ``norm_weight``."""
    return x + F.layer_norm(h, h.shape[-1:]) * ops.vector("norm_weight")


def fast_matrix(dim_out: int, dim_in: int) -> nn.Parameter:
    """An initial fast weight with unit-variance outputs for unit-variance inputs."""
    return nn.Parameter(torch.randn(dim_out, dim_in) / math.sqrt(dim_in))


#: The widest hidden layer an MLP memory may have (a bound on ``dim * expansion``): far above
#: any useful width, it turns a typo (``expansion=1e6``) into an error instead of an
#: allocation that runs for minutes.
MAX_HIDDEN = 1 << 20


def check_expansion(name: str, dim: int, expansion: object) -> None:
    """Refuses an ``expansion`` that is not a finite number > 0 giving at most
    :data:`MAX_HIDDEN` hidden features."""
    if isinstance(expansion, bool) or not isinstance(expansion, (int, float)):
        raise ValueError(f"{name}: expansion must be > 0 (a number), got {expansion!r}")
    if not (math.isfinite(expansion) and expansion > 0):
        raise ValueError(f"{name}: expansion must be > 0 and finite, got {expansion}")
    if dim * expansion > MAX_HIDDEN:
        raise ValueError(
            f"{name}: expansion={expansion} gives {dim} * {expansion} hidden features, more than "
            f"the {MAX_HIDDEN} allowed"
        )


class MLPMemory(MemoryModel):
    """``f(W; x) = x + LN(W_L s(... s(W_1 x)))`` (camera-ready §3, ``L_M = depth``).

    Fast weights ``w1 .. w{depth}`` (``w1``: ``(hidden, dim)``, last: ``(dim, hidden)``,
    ``hidden = round(dim * expansion)``; with ``depth = 1`` just ``w1``: ``(dim, dim)``) and,
    in the residual form, the LayerNorm gain ``norm_weight`` ``(dim,)``.

    Args:
        dim: features of keys, values, queries and retrievals.
        depth: linear layers ``L_M`` (>= 1).
        expansion: hidden width as a multiple of ``dim`` (a finite number > 0, at most
            :data:`MAX_HIDDEN` hidden features).
        activation: ``"gelu"`` (default), ``"silu"``, ``"relu"``, ``"tanh"`` or ``"identity"``.
        residual_norm: the residual-and-LayerNorm form (on by default); off gives a plain MLP.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        expansion: int | float = 4.0,
        *,
        activation: str = "gelu",
        residual_norm: bool = True,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"MLPMemory: dim must be >= 1, got {dim}")
        if depth < 1:
            raise ValueError(f"MLPMemory: depth must be >= 1, got {depth}")
        check_expansion("MLPMemory", dim, expansion)
        self.dim_in = self.dim_out = dim
        self.depth = depth
        self.hidden = max(1, round(dim * expansion))
        self.activation_name = activation
        self.activation = get_activation(activation)
        self.residual_norm = residual_norm
        sizes = [dim] + [self.hidden] * (depth - 1) + [dim]
        for i in range(depth):
            self.register_parameter(f"w{i + 1}", fast_matrix(sizes[i + 1], sizes[i]))
        if residual_norm:
            self.norm_weight = nn.Parameter(torch.ones(dim))

    def forward_ops(self, ops: Any, x: Tensor) -> Tensor:
        h = x
        for i in range(self.depth):
            if i > 0:
                h = self.activation(h)
            h = ops.linear(f"w{i + 1}", h)
        return residual_norm(ops, x, h) if self.residual_norm else h

    def curvature(self) -> float:
        """``2 hidden (depth - 1)`` in the residual-LayerNorm form (``2 dim`` at depth 1): the
        LayerNorm divides by the spread of its input, about ``|h| / sqrt(hidden)`` at ``W_0``,
        so the last layer's curvature is about ``2 hidden``. Without it ``2 hidden / dim``
        (2 at depth 1). Power iteration at ``W_0`` on random unit keys measured the largest
        eigenvalue at 100-270 (dim 16, hidden 64) and 300-380 (dim 48, hidden 192) for depth 2,
        7-10 without the LayerNorm."""
        if self.residual_norm:
            return 2.0 * (self.hidden * (self.depth - 1) if self.depth > 1 else self.dim_in)
        return 2.0 * self.hidden / self.dim_in if self.depth > 1 else 2.0

    def fused_spec(self) -> FusedSpec | None:
        if type(self).forward_ops is not MLPMemory.forward_ops or self.activation_name not in ACTIVATIONS:
            return None  # a subclass that changes the forward is not what the fused path computes
        names = tuple(f"w{i + 1}" for i in range(self.depth))
        return FusedSpec(names, self.activation_name, "norm_weight" if self.residual_norm else None)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim_in}, depth={self.depth}, hidden={self.hidden}, "
            f"activation={self.activation_name!r}, residual_norm={self.residual_norm}"
        )
