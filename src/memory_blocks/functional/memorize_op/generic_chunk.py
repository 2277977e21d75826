"""One chunk for any memory model, through ``torch.func``: the general (slower) path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from memory_blocks.functional.memorize_op.recurrence import ChunkCoefficients, momentum_at_end

__all__ = ["generic_chunk"]

Weights = dict[str, Tensor]


def _lead(c: Tensor, ndim: int) -> Tensor:
    """A (batch, heads, L) coefficient broadcast over (batch, heads, L, *shape)."""
    return c.reshape(*c.shape, *([1] * (ndim - 3)))


@torch.compiler.disable  # takes inner gradients with torch.autograd.grad: runs eagerly under torch.compile
def generic_chunk(
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
) -> tuple[Tensor, Weights, Weights, Weights | None]:
    """Writes and reads one chunk (at most ``chunk`` tokens) with gradient point ``anchor``.

    Per-token gradients come from ``vmap(grad(loss))``; the chunk's per-token weights
    ``W_t = beta_t W_s + gamma_t S_s - sum_i A_{ti} g_i`` are materialised, and each token is
    read with its own weights. ``create_graph`` is implied: ``torch.func`` transforms are
    differentiable by the surrounding autograd whenever it records.
    """
    if k.shape[-2] > chunk:
        raise ValueError(f"generic_chunk: got {k.shape[-2]} tokens for a chunk of {chunk}")

    def token_loss(w: Weights, key: Tensor, value: Tensor) -> Tensor:
        return objective(memory.forward_single(w, key.unsqueeze(0)), value.unsqueeze(0)).sum()

    per_token = vmap(grad(token_loss), in_dims=(None, 0, 0))
    grads = vmap(vmap(per_token))(anchor, k, v)  # name -> (batch, heads, L, *shape)
    flat = {n: g.flatten(3) for n, g in grads.items()}
    token_weights = {}
    for name, w in weights.items():
        base = w.unsqueeze(2)
        if coef.beta is not None:
            base = base * _lead(coef.beta, base.ndim)
        if coef.gamma is not None:
            base = base + momentum[name].unsqueeze(2) * _lead(coef.gamma, base.ndim)
        mix = coef.mix[lr_keys[name]]
        correction = (mix @ flat[name]).reshape(*mix.shape[:-1], *w.shape[2:])
        token_weights[name] = base - correction

    def read(w: Weights, query: Tensor) -> Tensor:
        return memory.forward_single(w, query.unsqueeze(0)).squeeze(0)

    y = vmap(vmap(vmap(read)))(token_weights, q)

    def subtract(name: str, base: Tensor, c: Tensor) -> Tensor:
        return base - (c.unsqueeze(-2) @ flat[name]).squeeze(-2).reshape(base.shape)

    new_momentum = momentum_at_end(momentum, coef, lr_keys, subtract)
    new_weights = {n: tw[:, :, -1] for n, tw in token_weights.items()}
    return y, new_weights, new_momentum, anchor if need_last_anchor else None
