"""The linear memory: one matrix, ``f(W; x) = W x`` (+ an optional bias)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from memory_blocks.functional.memorize_op.fused_block import FusedSpec
from memory_blocks.memories.base import MemoryModel

__all__ = ["LinearMemory"]


class LinearMemory(MemoryModel):
    """``f(W; x) = W x (+ b)``: the shallow memory of linear attention and the delta rule.

    With chunk size 1, no momentum and no forgetting, the memory's update with the squared
    error is the delta rule ``W_t = W_{t-1} - 2 theta_t (W_{t-1} k_t - v_t) k_t^T``.

    Fast weights: ``weight`` ``(dim_out, dim_in)`` (the ``nn.Linear`` convention) and, with
    ``bias=True``, ``bias`` ``(dim_out,)``.

    Args:
        dim_in: features of keys and queries.
        dim_out: features of values and retrievals.
        bias: learn a bias too.
        init_std: standard deviation of ``W_0`` (0: the memory starts empty).
    """

    def __init__(self, dim_in: int, dim_out: int, bias: bool = False, *, init_std: int | float = 0.0) -> None:
        super().__init__()
        if dim_in < 1 or dim_out < 1:
            raise ValueError(f"LinearMemory: dim_in and dim_out must be >= 1, got {dim_in}, {dim_out}")
        if init_std < 0:
            raise ValueError(f"LinearMemory: init_std must be >= 0, got {init_std}")
        self.dim_in, self.dim_out = dim_in, dim_out
        self.weight = nn.Parameter(torch.randn(dim_out, dim_in) * init_std)
        self.bias = nn.Parameter(torch.zeros(dim_out)) if bias else None

    def forward_ops(self, ops: Any, x: Tensor) -> Tensor:
        y = ops.linear("weight", x)
        return y + ops.vector("bias") if self.bias is not None else y

    def curvature(self) -> float:
        """2 for unit-norm keys (the Hessian is ``2 k k^T``); 4 with a bias (``2 [k; 1] [k; 1]^T``)."""
        return 4.0 if self.bias is not None else 2.0

    def fused_spec(self) -> FusedSpec | None:
        if self.bias is not None or type(self).forward_ops is not LinearMemory.forward_ops:
            return None
        return FusedSpec(("weight",), "identity", None)

    def extra_repr(self) -> str:
        return f"dim_in={self.dim_in}, dim_out={self.dim_out}, bias={self.bias is not None}"
