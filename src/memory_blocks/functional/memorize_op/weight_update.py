"""The full-size weight update at the end of a block, with a hand-written backward pass.

At a block's end every fast-weight matrix (and its momentum) is written once:

    out = beta W + gamma S - sum_i c_i delta_i x_i^T        (per batch and head)

with scalars ``beta``, ``gamma`` per (batch, head), the start weights ``W`` and momentum ``S``,
and the factored per-token gradients ``delta_i x_i^T`` of the block's tokens. Written with
autograd this is a chain of full-size element-wise products and sums (forward and backward),
and the gradients of ``beta`` and ``gamma`` each go through a full-size temporary. Here the
forward writes the result in place in one buffer, and the backward writes only the two
full-size gradients it must (``beta G`` and ``gamma G``); the gradients of ``beta`` and
``gamma`` are dot products and those of the factors small products.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["decayed_update", "dot_last"]


def _scale(s: Tensor) -> Tensor:
    """A (batch, heads) scalar broadcast over (batch, heads, rows, cols)."""
    return s.unsqueeze(-1).unsqueeze(-1)


def dot_last(a: Float[Tensor, "..."], b: Float[Tensor, "..."], dims: int) -> Float[Tensor, "..."]:
    """``sum(a * b)`` over the last ``dims`` dimensions (``b`` broadcast to ``a``), per
    leading index, without a full-size temporary."""
    lead = a.shape[: a.ndim - dims]
    size = math.prod(a.shape[a.ndim - dims :])
    # (This einsum form, rows of shape (1, n), runs a dot-product kernel; vecdot, bmm and
    # einsum over (batch, heads, n) forms were 2 to 25 times slower in measurements.)
    out = torch.einsum(
        "...n,...n->...", a.reshape(-1, 1, size), b.expand_as(a).reshape(-1, 1, size)
    )
    return out.view(lead)


class _DecayedUpdate(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        w: Tensor,
        beta: Tensor | None,
        s: Tensor | None,
        gamma: Tensor | None,
        delta: Tensor,
        x: Tensor,
        c: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(w, beta, s, gamma, delta, x, c)
        if beta is None:
            out = w.clone(memory_format=torch.contiguous_format)
        else:
            out = torch.mul(w, _scale(beta))
        if s is not None:
            out.addcmul_(s, _scale(gamma))
        rows, cols = out.shape[-2:]
        out.view(-1, rows, cols).baddbmm_(
            delta.mT.reshape(-1, rows, delta.shape[-2]),
            (c.unsqueeze(-1) * x).reshape(-1, x.shape[-2], cols),
            alpha=-1,
        )
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        w, beta, s, gamma, delta, x, c = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        d_w = d_beta = d_s = d_gamma = d_delta = d_x = d_c = None
        if need[0]:
            d_w = grad if beta is None else grad * _scale(beta)
        if need[1]:
            d_beta = dot_last(grad, w, 2)
        if need[2]:
            d_s = grad * _scale(gamma)
        if need[3]:
            d_gamma = dot_last(grad, s, 2)
        if need[5] or need[6]:
            z = delta @ grad  # (..., M, cols)
            if need[5]:
                d_x = -(c.unsqueeze(-1) * z)
            if need[6]:
                d_c = -(z * x).sum(-1)
        if need[4]:
            d_delta = -((c.unsqueeze(-1) * x) @ grad.mT)
        return d_w, d_beta, d_s, d_gamma, d_delta, d_x, d_c


def decayed_update(
    w: Float[Tensor, "batch heads rows cols"],
    beta: Float[Tensor, "batch heads"] | None,
    s: Float[Tensor, "batch heads rows cols"] | None,
    gamma: Float[Tensor, "batch heads"] | None,
    delta: Float[Tensor, "batch heads tokens rows"],
    x: Float[Tensor, "batch heads tokens cols"],
    c: Float[Tensor, "batch heads tokens"],
) -> Float[Tensor, "batch heads rows cols"]:
    """``beta W + gamma S - sum_i c_i delta_i x_i^T`` (``beta`` ``None``: 1; ``s`` ``None``: no
    momentum term), differentiable in every argument."""
    if (s is None) != (gamma is None):
        raise ValueError("decayed_update: pass both s and gamma, or neither")
    return _DecayedUpdate.apply(w, beta, s, gamma, delta, x, c)
