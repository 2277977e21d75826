"""The ``q``-th power sums of every token's accumulator in a chunk, with a hand-written backward.

The per-token ``l_q`` readout (Moneta, ``phi(A_t) = A_t / s(A_t)``) needs, for each token ``t`` of
a chunk, ``||A_t||_q^q = sum |A_t|^q`` over the whole matrix, where

    A_t = A + sum_k c_k[t] M_k + sum_j mix[t, j] delta_j x_j^T

(``A`` the chunk's start, ``M_k`` a few full directions with per-token coefficients, the
``delta_j x_j^T`` the chunk's factored gradients). Only these scalars are needed, not the
matrices: the forward pass walks the tokens with one matrix, moved from token to token in place
(``A_t - A_{t-1}`` is the change of the coefficients times ``M_k`` and a rank-``src`` product),
so a matrix the size of the weights stays in cache and nothing is stored. The backward pass
walks the tokens again and, from ``R_t = d total_t / d A_t = q |A_t|^(q-2) A_t`` scaled by the
token's incoming gradient, accumulates ``dA = sum_t R_t``, ``dM_k = sum_t c_k[t] R_t``,
``dc_k[t] = <R_t, M_k>`` and the factors' gradients (two small products per token). Written with
autograd the same loop records about twice as many full-size operations and keeps every
token's matrix for the backward pass.

A backward pass that is itself recorded (``create_graph=True``) differentiates
:func:`token_powers_reference`, the same sums written with autograd, so that second derivatives
stay available.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from memory_blocks.functional.memorize_op.recompute import input_gradients
from memory_blocks.functional.memorize_op.weight_update import dot_last

__all__ = ["abs_power", "token_powers", "token_powers_reference"]

#: Full directions ``M_k`` with their per-row coefficients ``c_k`` (``None``: 1).
Dense = Sequence[tuple[Tensor | None, Tensor]]


def abs_power(a: Float[Tensor, "..."], p: float) -> Float[Tensor, "..."]:
    """``|a|^p`` entry-wise, differentiable; by products where ``p`` is 2 or 4 (``pow(4)`` of a
    weight-sized matrix takes 10-20 times as long as two squares on a CPU)."""
    if p == 2:
        return a.square()
    if p == 4:
        return a.square().square()
    return a.abs().pow(p)


def _power_sum(a: Tensor, q: float, scratch: Tensor | None = None) -> Tensor:
    """``sum |a|^q`` over the last two dimensions, in place in ``scratch`` (``a``'s shape) when
    given (a fresh full-size temporary per token costs as much again in page faults)."""
    if scratch is None:  # (differentiable: the reference's form)
        return abs_power(a, q).sum(dim=(-2, -1))
    if q == 4:
        return torch.square(a, out=scratch).square_().sum(dim=(-2, -1))
    return torch.abs(a, out=scratch).pow_(q).sum(dim=(-2, -1))


def token_powers_reference(
    a: Float[Tensor, "*#lead dim_out dim_in"],
    dense: Dense,
    delta: Float[Tensor, "*lead src dim_out"],
    x: Float[Tensor, "*lead src dim_in"],
    mix: Float[Tensor, "*lead rows src"],
    q: float,
) -> Float[Tensor, "*lead rows"]:
    """:func:`token_powers` written with autograd (each token's matrix built and differentiated
    as it is): the oracle of the tests and the path of a recorded backward pass."""
    rows, src = mix.shape[-2:]
    out, inn = a.shape[-2:]
    lead = mix.shape[:-2]
    left = (mix.unsqueeze(-1) * delta.unsqueeze(-3)).mT.reshape(-1, rows, out, src)
    right = x.reshape(-1, src, inn)
    totals = []
    for t in range(rows):
        start = a
        for c, m in dense:
            start = (start + m) if c is None else start + c[..., t : t + 1, :] * m
        own = torch.baddbmm(start.expand(*lead, out, inn).reshape(-1, out, inn), left[:, t], right)
        totals.append(_power_sum(own, q))
    return torch.stack(totals, dim=-1).reshape(*lead, rows)


class _Walk:
    """The chunk's tokens' accumulators, flattened to ``(n, out, in)``, visited one at a time."""

    def __init__(self, a: Tensor, cs: Sequence[Tensor | None], ms: Sequence[Tensor], delta: Tensor,
                 x: Tensor, mix: Tensor) -> None:
        self.rows, src = mix.shape[-2:]
        self.out, self.inn = a.shape[-2:]
        lead = mix.shape[:-2]
        self.n = n = mix.numel() // (self.rows * src)
        # The factored part of token t's accumulator is left[:, t] @ right.
        self.left = (mix.unsqueeze(-1) * delta.unsqueeze(-3)).mT.reshape(n, self.rows, self.out, src)
        self.right = x.reshape(n, src, self.inn)
        self.a = a.expand(*lead, self.out, self.inn).reshape(n, self.out, self.inn)
        self.ms = [m.expand(*lead, self.out, self.inn).reshape(n, self.out, self.inn) for m in ms]
        self.cs = [None if c is None else c.reshape(n, self.rows) for c in cs]

    def per_token(self, c: Tensor) -> tuple[Tensor, ...]:
        """``(n, rows)`` scalars as one ``(n, 1, 1)`` tensor per token (indexed once, not per use)."""
        return c.mT.reshape(self.rows, -1, 1, 1).unbind(0)

    def __iter__(self) -> Iterator[Tensor]:
        """Yields token ``t``'s accumulator (one buffer, moved in place from token to token)."""
        own = self.a.clone(memory_format=torch.contiguous_format)
        steps = []  # (direction, its coefficient's change at each token)
        for m, c in zip(self.ms, self.cs):
            if c is None:
                own += m
            else:
                steps.append((m, self.per_token(torch.diff(c, dim=-1, prepend=torch.zeros_like(c[:, :1])))))
        left = torch.diff(self.left, dim=1, prepend=torch.zeros_like(self.left[:, :1])).unbind(1)
        for t in range(self.rows):
            for m, step in steps:
                own.addcmul_(m, step[t])
            own.baddbmm_(left[t], self.right)
            yield own


class _TokenPowers(torch.autograd.Function):
    """Inputs: ``q``, the number ``k`` of dense directions, ``a``, ``delta``, ``x``, ``mix``,
    then ``k`` coefficients (``None`` for 1) and ``k`` directions."""

    @staticmethod
    def forward(ctx: Any, q: float, k: int, a: Tensor, delta: Tensor, x: Tensor, mix: Tensor,
                *dense: Tensor | None) -> Tensor:
        ctx.q, ctx.k = q, k
        ctx.save_for_backward(a, delta, x, mix, *dense)
        walk = _Walk(a, dense[:k], dense[k:], delta, x, mix)  # type: ignore[arg-type]
        scratch = a.new_empty(walk.n, walk.out, walk.inn)
        totals = torch.stack([_power_sum(own, q, scratch) for own in walk], dim=-1)
        return totals.reshape(*mix.shape[:-1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k = ctx.q, ctx.k
        a, delta, x, mix, *dense = ctx.saved_tensors
        cs, ms = dense[:k], dense[k:]
        if torch.is_grad_enabled():
            # A recorded backward: differentiate the autograd form on aliases of the inputs, so
            # that the gradients stay connected to the graph that produced them.
            inputs = [t if t is None or not t.requires_grad else t.view_as(t) for t in (a, delta, x, mix, *dense)]
            ia, idelta, ix, imix, *idense = inputs
            with torch.enable_grad():
                out = token_powers_reference(ia, list(zip(idense[:k], idense[k:])), idelta, ix, imix, q)
            result, _ = input_gradients((out,), (grad,), inputs, create_graph=True)
            return (None, None, *result)
        walk = _Walk(a, cs, ms, delta, x, mix)
        n, rows, out, inn = walk.n, walk.rows, walk.out, walk.inn
        src = mix.shape[-1]
        w = (q * grad).reshape(n, rows)  # d total_t / d A_t = q |A_t|^(q-2) A_t, times total_t's gradient
        w_t = walk.per_token(w)
        scaled = [None if c is None else walk.per_token(w * c) for c in walk.cs]
        d_a = a.new_zeros(n, out, inn)
        d_ms = [None if c is None else a.new_zeros(n, out, inn) for c in walk.cs]
        dots = [None if c is None else a.new_empty(rows, n) for c in walk.cs]  # <R_t, M_k> before w
        d_left = a.new_empty(n, rows, out, src)
        d_right = a.new_zeros(n, src, inn)
        left_w = (walk.left * w.view(n, rows, 1, 1)).mT
        r = a.new_empty(n, out, inn)
        for t, own in enumerate(walk):
            if q == 4:
                torch.pow(own, 3, out=r)
            else:
                torch.abs(own, out=r).pow_(q - 2).mul_(own)
            d_a.addcmul_(r, w_t[t])
            for j, m in enumerate(walk.ms):
                if scaled[j] is not None:
                    d_ms[j].addcmul_(r, scaled[j][t])  # type: ignore[index,union-attr]
                    dots[j][t] = dot_last(r, m, 2)  # type: ignore[index]
            d_left[:, t] = torch.bmm(r, walk.right.mT)
            d_right.baddbmm_(left_w[:, t], r)
        d_left.mul_(w.view(n, rows, 1, 1))
        lead = mix.shape[:-2]
        # left[t, o, j] = mix[t, j] delta[j, o]
        d_mix = torch.einsum("ntoj,njo->ntj", d_left, delta.reshape(n, src, out)).reshape(mix.shape)
        d_delta = torch.einsum("ntoj,ntj->njo", d_left, mix.reshape(n, rows, src)).reshape(delta.shape)
        d_x = d_right.reshape(x.shape)

        def back(g: Tensor, like: Tensor) -> Tensor:
            return g.reshape(*lead, out, inn).sum_to_size(like.shape)

        d_c = [None if c is None else (g.mT * w).reshape(c.shape) for c, g in zip(cs, dots)]  # type: ignore[union-attr]
        d_m = [back(d_a if g is None else g, m) for m, g in zip(ms, d_ms)]
        return (None, None, back(d_a, a), d_delta, d_x, d_mix, *d_c, *d_m)


def token_powers(
    a: Float[Tensor, "*#lead dim_out dim_in"],
    dense: Dense,
    delta: Float[Tensor, "*lead src dim_out"],
    x: Float[Tensor, "*lead src dim_in"],
    mix: Float[Tensor, "*lead rows src"],
    q: float,
) -> Float[Tensor, "*lead rows"]:
    """``sum |A_t|^q`` for every row ``t``, ``A_t = A + sum_k c_k[t] M_k + sum_j mix[t, j] delta_j x_j^T``
    (module docstring), differentiable in every tensor.

    Args:
        a: the start accumulator ``A``; it and the directions ``M_k`` broadcast to
            ``(*lead, dim_out, dim_in)``.
        dense: ``(c_k, M_k)`` pairs, ``c_k`` of shape ``(*lead, rows, 1)`` or ``None`` (1 for
            every row).
        delta, x: the factored gradients ``delta_j x_j^T`` of the chunk's ``src`` tokens.
        mix: ``(*lead, rows, src)`` their weight in each row's accumulator.
        q: the power (``q >= 2``).

    Returns:
        ``(*lead, rows)`` the sums.
    """
    cs = [c for c, _ in dense]
    ms = [m for _, m in dense]
    return _TokenPowers.apply(q, len(dense), a, delta, x, mix, *cs, *ms)
