"""One chunk of the design-space rules (MIRAS, ATLAS) for any memory model, through ``torch.func``.

The rules the fast paths do not take:

- a nonlinear *retention readout* ``W = phi(A)`` (l_q normalisation, KL, elastic net): the
  memory keeps an accumulator ``A`` that decays linearly (eq. 14), every gradient is taken with
  respect to ``W`` at ``W = phi(A_{t0})``, and each token reads ``f(phi(A_t); q_t)``;
- the *Omega rule*: token ``t``'s inner loss is ``sum_{i = t-c+1..t} gamma_i l(W; k_i, v_i)``,
  every term at the weights of ``t``'s chunk start; in a chunk this is the chunk's mixing matrix
  times a band matrix of the ``gamma_i`` (:func:`with_window`) over the chunk's tokens and the
  ``c - 1`` before it;
- *Muon*: the momentum is linear as usual; inside a chunk the weights only decay, and at the
  chunk's last token ``C * orth(S_e)`` is written (:mod:`.newton_schulz`).

All three are exact with respect to :func:`~memory_blocks.memorize_naive` (the readout and the
window are per-token definitions computed in parallel; Muon's write is per chunk by definition,
and the naive loop applies it at the same tokens).

Two steps: :func:`extended_chunk` materialises each chunk's per-token weights (needed by a
readout, and for a user's module); :func:`factored_extended_chunk` keeps a built-in memory's dual
form for the Omega rule and Muon.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from memory_blocks.functional.memorize_op.anchored import Anchored
from memory_blocks.functional.memorize_op.factored_block import factored_block
from memory_blocks.functional.memorize_op.fast_ops import Reader
from memory_blocks.functional.memorize_op.newton_schulz import orthogonal_step
from memory_blocks.functional.memorize_op.recurrence import ChunkCoefficients, momentum_at_end
from memory_blocks.functional.memorize_op.weight_tape import plain_read

__all__ = ["Retained", "extended_chunk", "factored_extended_chunk", "weight_view", "with_window", "window_matrix"]

Weights = dict[str, Tensor]


class Retained:
    """A memory model read through a retention's readout: ``g(A; x) = f(phi(A); x)``.

    Offers what the paths of ``memorize`` call; :func:`weight_view` undoes it to take the
    gradients with respect to ``W = phi(A)``. ``retention=None`` reads ``A`` itself (the view
    then only marks the memory for the general path: ``factored`` is false).
    """

    factored = False

    def __init__(self, memory: Any, retention: Any) -> None:
        self.memory, self.retention = memory, retention
        self.dim_in, self.dim_out = memory.dim_in, memory.dim_out
        self._ndim = {n: w.ndim for n, w in memory.initial_weights().items()}

    def fused_spec(self) -> None:
        return None

    def initial_weights(self) -> Weights:
        return self.memory.initial_weights()

    def readout(self, acc: Weights) -> Weights:
        """``phi(A)`` for accumulators with any leading dimensions (``retention=None``: ``A``)."""
        if self.retention is None:
            return acc
        return {n: self.retention.readout(a, self._ndim[n]) for n, a in acc.items()}

    @property
    def per_chunk(self) -> bool:
        """Whether the readout is expanded at each chunk's start (``Retention.per_chunk``)."""
        return self.retention is not None and self.retention.per_chunk

    def expanded(self, start: Weights, acc: Weights) -> Weights:
        """``phi(A_0) + J_phi(A_0)[A - A_0]`` per name; ``start`` (``A_0``) broadcasts over the
        extra leading dimensions of ``acc`` (the per-chunk readout inside a chunk)."""
        if self.retention is None:
            return acc
        out = {}
        for n, a in acc.items():
            a0 = start[n].reshape(*start[n].shape[:2], *([1] * (a.ndim - start[n].ndim)), *start[n].shape[2:])
            nd = self._ndim[n]
            out[n] = self.retention.readout(a0, nd) + self.retention.tangent(a0, a - a0, nd)
        return out

    def forward_ops(self, ops: Any, x: Tensor) -> Tensor:
        """The wrapped model's forward on ``ops`` (the dual form): only without a readout."""
        if self.retention is not None:
            raise ValueError("Retained.forward_ops: a retention readout needs materialised weights")
        return self.memory.forward_ops(ops, x)

    def forward_single(self, weights: Weights, x: Tensor) -> Tensor:
        return self.memory.forward_single(self.readout(weights), x)

    def forward_with(self, weights: Weights, x: Tensor) -> Tensor:
        return self.memory.forward_with(self.readout(weights), x)


def accumulator(memory: Any, d: Weights) -> Weights:
    """The accumulator ``A`` of coordinates ``d`` (``W_0 + d`` for an :class:`Anchored` memory)."""
    return memory.shift(d) if isinstance(memory, Anchored) else d


def retained(memory: Any) -> Retained | None:
    """The :class:`Retained` view inside ``memory`` (under :class:`Anchored`), or ``None``."""
    inner = memory.memory if isinstance(memory, Anchored) else memory
    return inner if isinstance(inner, Retained) else None


def weight_view(memory: Any) -> tuple[Any, Callable[[Weights], Weights]]:
    """``(raw memory model, coordinates -> fast weights)`` for a memory that may be wrapped in
    :class:`~memory_blocks.functional.memorize_op.anchored.Anchored` and/or :class:`Retained`."""
    if isinstance(memory, Anchored):
        raw, inner = weight_view(memory.memory)
        return raw, lambda d: inner(memory.shift(d))
    if isinstance(memory, Retained):
        return memory.memory, memory.readout
    return memory, lambda w: w


def window_matrix(weight: Tensor, tokens: int, window: int) -> Tensor:
    """``Omega[..., t, j] = weight[..., j]`` for ``t <= j <= t + window - 1``, else 0.

    ``weight`` covers the ``window - 1`` tokens before a segment and its ``tokens`` tokens,
    ``(batch, heads, tokens + window - 1)``; the result is ``(batch, heads, tokens, tokens +
    window - 1)``: row ``t`` picks the window that ends at the segment's token ``t``.
    """
    m = weight.shape[-1]
    t = torch.arange(tokens, device=weight.device)[:, None]
    j = torch.arange(m, device=weight.device)[None, :]
    band = ((j >= t) & (j < t + window)).to(weight.dtype)
    return weight.unsqueeze(-2) * band


def with_window(coef: ChunkCoefficients, weight: Tensor, window: int) -> ChunkCoefficients:
    """The coefficients of a segment under the Omega rule: every mixing row over the segment's
    tokens becomes a row over the window-extended tokens (``mix @ Omega``)."""
    tokens = next(iter(coef.mix.values())).shape[-1]
    omega = window_matrix(weight, tokens, window)
    mix = {k: m @ omega for k, m in coef.mix.items()}
    mom_mix = {k: (m.unsqueeze(-2) @ omega).squeeze(-2) for k, m in coef.momentum_mix.items()}
    return ChunkCoefficients(coef.beta, coef.gamma, mix, coef.momentum_decay, mom_mix)


def _lead(c: Tensor, ndim: int) -> Tensor:
    """A (batch, heads, L) coefficient broadcast over (batch, heads, L, *shape)."""
    return c.reshape(*c.shape, *([1] * (ndim - 3)))


def extended_chunk(
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
    """Writes and reads one chunk (or the part of one) with gradient point ``anchor``.

    ``q`` holds the segment's ``L`` tokens; ``k``, ``v`` may hold ``M >= L`` tokens (the Omega
    window's earlier tokens first) with ``coef.mix`` of shape ``(..., L, M)``. With
    ``newton_schulz_steps > 0`` (Muon) the segment's end is a chunk end exactly when
    ``need_last_anchor`` is false, and only there the orthogonalised momentum is written.
    """
    tokens = q.shape[-2]
    if tokens > chunk:
        raise ValueError(f"extended_chunk: got {tokens} tokens for a chunk of {chunk}")
    raw, to_weights = weight_view(memory)

    def token_loss(w: Weights, key: Tensor, value: Tensor) -> Tensor:
        return objective(raw.forward_single(w, key.unsqueeze(0)), value.unsqueeze(0)).sum()

    per_token = vmap(grad(token_loss), in_dims=(None, 0, 0))
    grads = vmap(vmap(per_token))(to_weights(anchor), k, v)  # name -> (batch, heads, M, *shape)
    flat = {n: g.flatten(3) for n, g in grads.items()}

    def subtract(name: str, base: Tensor, c: Tensor) -> Tensor:
        return base - (c.unsqueeze(-2) @ flat[name]).squeeze(-2).reshape(base.shape)

    new_momentum = momentum_at_end(momentum, coef, lr_keys, subtract)
    token_weights = {}
    for name, w in weights.items():
        base = w.unsqueeze(2)
        if coef.beta is not None:
            base = base * _lead(coef.beta, base.ndim)
        else:
            base = base.expand(*w.shape[:2], tokens, *w.shape[2:])
        if newton_schulz_steps:
            if not need_last_anchor:
                write = chunk * orthogonal_step(new_momentum[name], w.ndim - 2, newton_schulz_steps)
                base = torch.cat([base[:, :, :-1], (base[:, :, -1] + write).unsqueeze(2)], dim=2)
            token_weights[name] = base
            continue
        if coef.gamma is not None:
            base = base + momentum[name].unsqueeze(2) * _lead(coef.gamma, base.ndim)
        mix = coef.mix[lr_keys[name]]
        correction = (mix @ flat[name]).reshape(*mix.shape[:-1], *w.shape[2:])
        token_weights[name] = base - correction

    def read(w: Weights, query: Tensor) -> Tensor:
        return raw.forward_single(w, query.unsqueeze(0)).squeeze(0)

    view = retained(memory)
    if view is not None and view.per_chunk:
        # Inside the chunk the readout's expansion at the chunk start; its last token exact.
        read_weights = view.expanded(accumulator(memory, anchor), accumulator(memory, token_weights))
        if not need_last_anchor:
            last = to_weights({n: tw[:, :, -1] for n, tw in token_weights.items()})
            read_weights = {n: torch.cat([w[:, :, :-1], last[n].unsqueeze(2)], dim=2) for n, w in read_weights.items()}
    else:
        read_weights = to_weights(token_weights)
    y = vmap(vmap(vmap(read)))(read_weights, q)
    new_weights = {n: tw[:, :, -1] for n, tw in token_weights.items()}
    return y, new_weights, new_momentum, anchor if need_last_anchor else None


def _pad_rows(coef: ChunkCoefficients, pad: int) -> ChunkCoefficients:
    """The coefficients with ``pad`` leading read rows that read the start weights unchanged."""

    def ones(t: Tensor, value: float) -> Tensor:
        return torch.cat([torch.full((*t.shape[:-1], pad), value, dtype=t.dtype, device=t.device), t], dim=-1)

    mix = {}
    for key, m in coef.mix.items():
        zeros = torch.zeros((*m.shape[:-2], pad, m.shape[-1]), dtype=m.dtype, device=m.device)
        mix[key] = torch.cat([zeros, m], dim=-2)
    beta = None if coef.beta is None else ones(coef.beta, 1.0)
    gamma = None if coef.gamma is None else ones(coef.gamma, 0.0)
    return ChunkCoefficients(beta, gamma, mix, coef.momentum_decay, coef.momentum_mix)


def factored_extended_chunk(
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
    read: Reader = plain_read,
) -> tuple[Tensor, Weights, Weights, Weights | None]:
    """:func:`extended_chunk` for a built-in (factored) memory without a retention readout: the
    Omega rule and Muon through the dual form of
    :func:`~memory_blocks.functional.memorize_op.factored_block.factored_block`, one chunk at a time.

    The window's ``c - 1`` earlier tokens become leading read rows that are dropped (their mixing
    rows are zero, so every row index of the block is one of its key positions); with Muon the
    mixing is zero (no write inside the chunk) while the momentum keeps its own coefficients, and
    at a chunk end the orthogonalised momentum is added and the last token read again.
    """
    tokens, pad = q.shape[-2], k.shape[-2] - q.shape[-2]
    if tokens > chunk:
        raise ValueError(f"factored_extended_chunk: got {tokens} tokens for a chunk of {chunk}")
    if pad:
        q = torch.cat([q[..., :1, :].expand(*q.shape[:-2], pad, q.shape[-1]), q], dim=-2)
        coef = _pad_rows(coef, pad)
    if newton_schulz_steps:
        mix = {key: torch.zeros_like(m) for key, m in coef.mix.items()}
        coef = ChunkCoefficients(coef.beta, None, mix, coef.momentum_decay, coef.momentum_mix)
    y, new_weights, new_momentum, _ = factored_block(
        memory, objective, lr_keys, k.shape[-2], anchor, weights, momentum, q, k, v, coef, create_graph,
        False, read=read,
    )
    y = y[..., pad:, :]
    if newton_schulz_steps and not need_last_anchor:
        new_weights = {
            n: w + chunk * orthogonal_step(new_momentum[n], w.ndim - 2, newton_schulz_steps)
            for n, w in new_weights.items()
        }
        last = memory.forward_with(new_weights, q[..., -1:, :])
        y = torch.cat([y[..., :-1, :], last], dim=-2)
    return y, new_weights, new_momentum, anchor if need_last_anchor else None
