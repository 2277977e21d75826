"""One chunk of a retention with a *per-chunk readout*, in the dual form of a built-in memory.

With ``Retention.per_chunk`` token ``t`` of a chunk reads ``phi(A_0) + J[A_t - A_0]``
(``J = J_phi(A_0)``, ``A_0`` the accumulator at the chunk's start) and the chunk's last token
reads ``phi(A_t)``. The accumulator moves linearly inside the chunk,

    A_t - A_0 = beta_t D - D_0 + gamma_t S - sum_i mix[t, i] delta_i x_i^T

(``D`` the weights the segment starts from, ``D_0`` the chunk's start, in the memory's
coordinates; ``S`` the momentum), so ``J`` needs only the three full directions ``D``, ``D_0``,
``S`` once per chunk and the factored gradients through the retention's
:meth:`~memory_blocks.Retention.expand`: no weights are built per token. Exact with
respect to :func:`~memory_blocks.memorize_naive`, which expands ``phi`` with forward-mode
autograd.

A readout that only rescales each matrix (``Retention.scales_only``: ``l_q``,
``phi(A) = A / s(A)``) keeps the dual form with the per-token rule too: token ``t`` reads
``A_t h_t / s(A_t)``, the dual-form read of ``A_t`` over the scale of its own accumulator
(``Expansion.read_tokens``; the chunk's accumulators are materialised for their norms only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.memorize_op.extended_chunk import accumulator, retained
from memory_blocks.functional.memorize_op.factored_block import factored_update
from memory_blocks.functional.memorize_op.fast_ops import DualOps, Factor, KeyPathOps
from memory_blocks.functional.memorize_op.recurrence import ChunkCoefficients, momentum_at_end, weights_at
from memory_blocks.functional.readout_expansion import Expansion

__all__ = ["readout_chunk", "takes_dual_form"]

Weights = dict[str, Tensor]


class _PointOps:
    """Reads ``phi(A_0)`` (the chunk's gradient point): matrices through their expansions,
    vectors (identity readout) as they are."""

    def __init__(self, expansions: dict[str, Expansion], vectors: Weights) -> None:
        self.expansions, self.vectors = expansions, vectors

    def linear(self, name: str, x: Tensor) -> Tensor:
        return self.expansions[name].read_point(x)

    def vector(self, name: str) -> Tensor:
        return self.vectors[name].unsqueeze(-2)


class _ExpandedOps:
    """Reads ``phi(A_0) + J[A_t - A_0]`` per row (the last row ``phi(A_end)`` when ``end`` is
    given), or with ``per_token`` each row's own ``phi(A_t)`` (a rescaling readout,
    ``Expansion.read_tokens``); vectors keep the identity readout and read ``A_t`` itself."""

    def __init__(
        self,
        expansions: dict[str, Expansion],
        dual: DualOps,
        anchor: Weights | None,
        base: Weights | None,
        end: dict[str, Expansion] | None,
        per_token: bool = False,
    ) -> None:
        self.expansions, self.dual, self.anchor, self.base, self.end = expansions, dual, anchor, base, end
        self.per_token = per_token

    def linear(self, name: str, h: Tensor) -> Tensor:
        dual = self.dual
        start = dual.start[name]
        # A_t - A_0 = beta_t D - D_0 + gamma_t S - sum_i mix[t, i] g_i
        if self.anchor is None:  # the segment starts at the chunk's start: (beta_t - 1) D
            dense = [] if dual.beta is None else [(dual.beta - 1, start)]
        else:
            dense = [(dual.beta, start), (None, -self.anchor[name])]
        if dual.gamma is not None and dual.momentum is not None:
            dense.append((dual.gamma, dual.momentum[name]))
        delta, x = dual.factors[name]
        if self.per_token:
            return self.expansions[name].read_tokens(h, dense, delta, x, -dual.mix[name])
        # a chunk's mixing matrix is lower triangular: the pairs j > t are zero
        y = self.expansions[name].read(h, dense, delta, x, -dual.mix[name], causal=True)
        if self.end is not None:
            y = torch.cat([y[..., :-1, :], self.end[name].read_point(h[..., -1:, :])], dim=-2)
        return y

    def vector(self, name: str) -> Tensor:
        w = self.dual.vector(name)
        return w if self.base is None else w + self.base[name]


def takes_dual_form(retention: Any) -> bool:
    """Whether a retention's readout keeps a built-in memory's dual form here: the per-chunk
    readout (``per_chunk``), or a readout that only rescales each matrix (``scales_only``:
    every token reads its own ``phi(A_t)`` exactly)."""
    return retention is not None and (retention.per_chunk or retention.scales_only)


@torch.compiler.disable  # takes inner gradients with torch.autograd.grad: runs eagerly under torch.compile
def readout_chunk(
    memory: Any,
    objective: Callable[[Tensor, Tensor], Tensor],
    lr_keys: dict[str, str],
    chunk: int,
    anchor: Weights,
    weights: Weights,
    momentum: Weights,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    coef: ChunkCoefficients,
    create_graph: bool,
    need_last_anchor: bool,
    *,
    newton_schulz_steps: int = 0,
) -> tuple[Tensor, Weights, Weights, Weights | None]:
    """Writes and reads one chunk (or the part of one) of a built-in memory seen through a
    :class:`~memory_blocks.functional.memorize_op.extended_chunk.Retained` view whose retention
    has ``per_chunk`` set; the signature of
    :func:`~memory_blocks.functional.memorize_op.extended_chunk.extended_chunk` (no Omega
    window, no Muon).

    Returns the segment's retrievals, the weights and momentum after its last token, and (when
    ``need_last_anchor``) the chunk's gradient point.
    """
    tokens = q.shape[-2]
    view = retained(memory)
    if view is None or not takes_dual_form(view.retention) or newton_schulz_steps or k.shape[-2] != tokens:
        raise ValueError(
            "readout_chunk: needs a per-chunk or rescaling retention, no Omega window and no Muon"
        )
    per_token = not view.per_chunk
    if tokens > chunk:
        raise ValueError(f"readout_chunk: got {tokens} tokens for a chunk of {chunk}")
    base = getattr(memory, "base", None)
    raw = view.memory
    acc0 = accumulator(memory, anchor)
    if not create_graph:
        k, v = k.detach(), v.detach()
        acc0 = {n: a.detach() for n, a in acc0.items()}
    retention = view.retention
    expansions = {n: retention.expand(a) for n, a in acc0.items() if a.ndim > 3}
    vectors = {n: a for n, a in acc0.items() if a.ndim <= 3}
    with torch.enable_grad():
        ops = KeyPathOps(_PointOps(expansions, vectors), tokens)
        loss = objective(raw.forward_ops(ops, k), v).sum()
        factors: dict[str, Factor] = ops.factors(loss, create_graph)
    update = factored_update(factors)
    new_weights = weights_at(weights, momentum, coef, lr_keys, tokens - 1, update=update)
    new_momentum = momentum_at_end(momentum, coef, lr_keys, update=update)
    mom = momentum if coef.gamma is not None else None
    mix = {name: coef.mix[key] for name, key in lr_keys.items()}
    dual = DualOps(weights, mom, coef.beta, coef.gamma, mix, factors)
    end = None
    if not need_last_anchor and not per_token:  # the chunk's last token reads phi(A_end) exactly
        end = {n: retention.expand(a) for n, a in accumulator(memory, new_weights).items() if a.ndim > 3}
    reads = _ExpandedOps(expansions, dual, None if anchor is weights else anchor, base, end, per_token)
    y = raw.forward_ops(reads, q)
    return y, new_weights, new_momentum, anchor if need_last_anchor else None
