"""The interface every memory model offers to the functional core."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.functional.memorize_op.fast_ops import DirectOps
from memory_blocks.functional.memorize_op.fused_block import FusedSpec
from memory_blocks.functional.state import MemoryState

__all__ = ["MemoryModel"]


class MemoryModel(nn.Module):
    """A family of functions ``f(W; x)`` whose weights ``W`` learn at test time.

    The module's own parameters are the initial fast weights ``W_0`` (trained by the outer
    loop); the memory's state holds one copy of the fast weights per (batch, head).

    A built-in (``factored``) model writes its forward once as :meth:`forward_ops` in terms of
    ``ops.linear(name, x)`` (a matrix fast weight of shape ``(dim_out, dim_in)``) and
    ``ops.vector(name)`` (a gain or bias), each fast weight used once; the functional core
    then evaluates it directly, at the chunk-start weights with factored per-token gradients,
    and in the dual form. Subclass and implement :meth:`forward_ops` to add such a model;
    wrap any other ``nn.Module`` in :class:`ModuleMemory`.

    Attributes:
        dim_in: features of keys and queries.
        dim_out: features of values and retrievals.
    """

    factored: ClassVar[bool] = True
    dim_in: int
    dim_out: int

    def initial_weights(self) -> dict[str, Tensor]:
        """``W_0``: fast-weight name -> trainable parameter (without batch and head dimensions)."""
        return dict(self.named_parameters())

    def forward_ops(self, ops: Any, x: Tensor) -> Tensor:
        """``f(W; x)`` written against ``ops`` (see :mod:`memory_blocks.functional.memorize_op.fast_ops`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_ops")

    def curvature(self) -> float:
        """``lambda_0``: a scale of the largest eigenvalue of one token's inner-loss Hessian
        (squared error, eq. 12) at ``W_0`` for unit-norm keys.

        :class:`~memory_blocks.step_scale.NormalizedStep` divides ``theta`` by it, so that one
        gate range is stable for every memory model. The base class returns 2 (a linear map
        read with unit-norm keys); deeper models override it.
        """
        return 2.0

    def fused_spec(self) -> FusedSpec | None:
        """What the hand-written fast path (:mod:`memory_blocks.functional.memorize_op.fused_block`) needs to
        compute this model, or ``None`` when it cannot (the general factored path is used)."""
        return None

    def forward_with(
        self, weights: dict[str, Tensor], x: Float[Tensor, "batch heads seq dim_in"]
    ) -> Float[Tensor, "batch heads seq dim_out"]:
        """``f(W; x_t)`` with per-(batch, head) weights ``(batch, heads, *shape)``."""
        return self.forward_ops(DirectOps(weights), x)

    def forward_single(
        self, weights: dict[str, Tensor], x: Float[Tensor, "seq dim_in"]
    ) -> Float[Tensor, "seq dim_out"]:
        """``f(W; x_t)`` with one set of weights (parameter shapes, no batch or head)."""
        return self.forward_ops(DirectOps(weights), x)

    def forward(self, x: Float[Tensor, "*batch seq dim_in"]) -> Float[Tensor, "*batch seq dim_out"]:
        """``f(W_0; x)``: the memory before it has learned anything."""
        return self.forward_ops(DirectOps(self.initial_weights()), x)

    def init_state(self, batch: int, heads: int) -> MemoryState:
        """The state at ``W_0`` with zero momentum, for ``batch`` sequences and ``heads`` heads."""
        if batch < 1 or heads < 1:
            raise ValueError(f"init_state: batch and heads must be >= 1, got {batch} and {heads}")
        weights, momentum = {}, {}
        for name, w0 in self.initial_weights().items():
            weights[name] = w0.expand(batch, heads, *w0.shape)
            # A zero that takes no memory; it is replaced by real tensors after the first chunk.
            momentum[name] = torch.zeros((), dtype=w0.dtype, device=w0.device).expand(
                batch, heads, *w0.shape
            )
        return MemoryState(weights, momentum)
