"""One block of chunks for a factored memory model: the fast path of ``memorize``.

A block holds several chunks. The weights are materialised only at block boundaries; inside a
block every weight the computation needs (each chunk's gradient point, each token's retrieval
weights) is held in the closed form of :mod:`memory_blocks.functional.memorize_op.recurrence` over the
block's start weights and the factored gradients of the tokens before it. Chunks stay
sequential (chunk ``j``'s gradients are taken at the weights after chunk ``j - 1``), but no
full-size tensor is written per chunk, and the retrieval of the whole block is one batched
dual-form pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.memorize_op.fast_ops import (
    DirectOps,
    DualOps,
    Factor,
    KeyPathOps,
    Reader,
)
from memory_blocks.functional.memorize_op.recurrence import (
    ChunkCoefficients,
    Update,
    momentum_at_end,
    weights_at,
)
from memory_blocks.functional.memorize_op.weight_tape import plain_read
from memory_blocks.functional.memorize_op.weight_update import decayed_update

__all__ = ["factored_block", "factored_update", "subtract_gradients"]

Weights = dict[str, Tensor]


def subtract_gradients(base: Tensor, factor: Factor, c: Tensor) -> Tensor:
    """``base - sum_i c_i g_i`` for factored per-token gradients, ``c`` of shape
    (batch, heads, M); for a matrix, one fused ``baddbmm`` (a single pass over the weights)."""
    if len(factor) == 2:
        delta, x = factor
        lead = base.shape[:-2]
        out = torch.baddbmm(
            base.reshape(-1, *base.shape[-2:]),
            delta.mT.reshape(-1, delta.shape[-1], delta.shape[-2]),
            (c.unsqueeze(-1) * x).reshape(-1, *x.shape[-2:]),
            alpha=-1,
        )
        return out.view(*lead, *out.shape[-2:])
    (g,) = factor
    return base - (c.unsqueeze(-2) @ g).squeeze(-2)


def factored_update(factors: dict[str, Factor]) -> Update:
    """The :data:`Update` of weights whose tokens' gradients are ``factors``:
    ``beta W + gamma S - sum_i c_i g_i``, fused for a matrix."""

    def update(
        name: str, w: Tensor, beta: Tensor | None, s: Tensor | None, gamma: Tensor | None, c: Tensor
    ) -> Tensor:
        factor = factors[name]
        if len(factor) == 2:
            return decayed_update(w, beta, s, gamma, factor[0], factor[1], c)
        base = w if beta is None else beta[..., None] * w
        if s is not None and gamma is not None:
            base = base + gamma[..., None] * s
        return subtract_gradients(base, factor, c)

    return update


def _cat(parts: list[dict[str, Factor]]) -> dict[str, Factor]:
    if len(parts) == 1:
        return parts[0]
    return {
        name: tuple(torch.cat([p[name][i] for p in parts], dim=-2) for i in range(len(f)))
        for name, f in parts[0].items()
    }


def _rows(c: Tensor | None, s: int, e: int) -> Tensor | None:
    return None if c is None else c[..., s:e]


@torch.compiler.disable  # takes inner gradients with torch.autograd.grad: runs eagerly under torch.compile
def factored_block(
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
    read: Reader = plain_read,
) -> tuple[Tensor, Weights, Weights, Weights | None]:
    """Writes and reads one block whose first chunk's gradient point is ``anchor``.

    ``read(h, W)`` applies the block's input weight matrices (``h @ W^T``; a
    :class:`~memory_blocks.functional.memorize_op.weight_tape.WeightTape` records the reads instead).
    Returns the block's retrievals, the weights and momentum after its last token, and (when
    ``need_last_anchor``) the gradient point of its last chunk.
    """
    n = k.shape[-2]
    mom = momentum if coef.gamma is not None else None
    mix = {name: coef.mix[key] for name, key in lr_keys.items()}
    starts = list(range(0, n, chunk))
    parts: list[dict[str, Factor]] = []
    for j, (s, kk, vv) in enumerate(zip(starts, k.split(chunk, dim=-2), v.split(chunk, dim=-2))):
        e = s + kk.shape[-2]
        if j == 0:
            point: DirectOps | DualOps = DirectOps(
                anchor if create_graph else {name: w.detach() for name, w in anchor.items()}, read
            )
        else:
            # The weights after token s - 1, in closed form over the tokens before s.
            point = DualOps(
                weights,
                mom,
                _rows(coef.beta, s - 1, s),
                _rows(coef.gamma, s - 1, s),
                {name: m[..., s - 1 : s, :s] for name, m in mix.items()},
                _cat(parts),
                read,
            )
        if not create_graph:
            kk, vv = kk.detach(), vv.detach()
        with torch.enable_grad():
            ops = KeyPathOps(point, e - s)
            loss = objective(memory.forward_ops(ops, kk), vv).sum()
            parts.append(ops.factors(loss, create_graph))
    factors = _cat(parts)
    y = memory.forward_ops(DualOps(weights, mom, coef.beta, coef.gamma, mix, factors, read), q)

    update = factored_update(factors)
    new_weights = weights_at(weights, momentum, coef, lr_keys, n - 1, update=update)
    new_momentum = momentum_at_end(momentum, coef, lr_keys, update=update)
    last_anchor = None
    if need_last_anchor:
        last = starts[-1]
        last_anchor = anchor if last == 0 else weights_at(weights, momentum, coef, lr_keys, last - 1, update=update)
    return y, new_weights, new_momentum, last_anchor
