"""Forgetting towards the initial weights, as a change of coordinates.

With ``forget_target="init"`` the forgetting of eq. 14 pulls the fast weights towards the memory's
initial weights ``W_0`` instead of zero:

    W_t = W_0 + (1 - alpha_t) (W_{t-1} - W_0) + S_t

In the displacement ``D = W - W_0`` this is the paper's recurrence unchanged,
``D_t = (1 - alpha_t) D_{t-1} + S_t``, with every gradient taken at ``W = W_0 + D``. So the fast
paths run the literal recurrence on ``D`` with the memory seen through :class:`Anchored`
(``f(W_0 + D; x)``), and ``memorize`` converts the state at entry and exit.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from memory_blocks.functional.state import MemoryState

__all__ = ["Anchored", "ShiftedOps", "from_displacement", "to_displacement"]


class ShiftedOps:
    """Ops (:mod:`memory_blocks.functional.memorize_op.fast_ops`) that read ``W_0 + D`` where the wrapped
    ops read ``D``: ``linear(name, x) = D x + W_0 x``, ``vector(name) = D + W_0``."""

    def __init__(self, ops: Any, base: dict[str, Tensor]) -> None:
        self.ops, self.base = ops, base

    def linear(self, name: str, x: Tensor) -> Tensor:
        return self.ops.linear(name, x) + x @ self.base[name].mT

    def vector(self, name: str) -> Tensor:
        return self.ops.vector(name) + self.base[name]


class Anchored:
    """A memory model seen in displacement coordinates: ``g(D; x) = f(W_0 + D; x)``.

    Offers what the paths of ``memorize`` call (``forward_ops``, ``forward_single``,
    ``forward_with``, ``factored``, ``fused_spec``); ``base`` holds ``W_0`` (parameter shapes,
    no batch or head dimensions), differentiable.
    """

    def __init__(self, memory: Any, base: dict[str, Tensor]) -> None:
        self.memory, self.base = memory, base
        self.factored = memory.factored
        self.dim_in, self.dim_out = memory.dim_in, memory.dim_out

    def fused_spec(self) -> Any:
        return self.memory.fused_spec()

    def initial_weights(self) -> dict[str, Tensor]:
        return self.memory.initial_weights()

    def forward_ops(self, ops: Any, x: Tensor) -> Tensor:
        return self.memory.forward_ops(ShiftedOps(ops, self.base), x)

    def shift(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """``W_0 + D`` per name: the weights of displacement coordinates ``D``."""
        return {n: self.base[n] + d for n, d in weights.items()}

    def forward_single(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.memory.forward_single(self.shift(weights), x)

    def forward_with(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.memory.forward_with(self.shift(weights), x)


def _shifted(state: MemoryState, base: dict[str, Tensor], sign: int) -> MemoryState:
    """The state with ``W + sign * W_0`` in place of ``W`` (weights and chunk-start weights)."""

    def shift(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: w + sign * base[n] for n, w in d.items()}

    cw = None if state.chunk_weights is None else shift(state.chunk_weights)
    return MemoryState(shift(state.weights), state.momentum, cw, state.offset)


def to_displacement(state: MemoryState, base: dict[str, Tensor]) -> MemoryState:
    """The state with ``W - W_0`` in place of ``W`` (weights and chunk-start weights)."""
    return _shifted(state, base, -1)


def from_displacement(state: MemoryState, base: dict[str, Tensor]) -> MemoryState:
    """The inverse of :func:`to_displacement`."""
    return _shifted(state, base, 1)
