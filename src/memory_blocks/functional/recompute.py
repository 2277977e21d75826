"""Recomputing a block in the backward pass instead of storing its activations.

The block runs once without recording (so its inner gradients are taken without building a
graph), keeping only its input tensors; the backward pass runs it again with recording and
differentiates that. Unlike ``torch.utils.checkpoint`` this works with ``torch.autograd.grad``
as well as ``.backward()``, and skips the graph of the first run entirely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.recurrence import ChunkCoefficients

__all__ = ["recompute_block"]

Weights = dict[str, Tensor]


def _coef_tensors(coef: ChunkCoefficients) -> list[Tensor | None]:
    return [
        coef.beta, coef.gamma, *coef.mix.values(), coef.momentum_decay, *coef.momentum_mix.values()
    ]


def _coef_from(coef: ChunkCoefficients, tensors: list[Tensor | None]) -> ChunkCoefficients:
    it = iter(tensors)
    beta, gamma = next(it), next(it)
    mix = {k: next(it) for k in coef.mix}
    decay = next(it)
    mom_mix = {k: next(it) for k in coef.momentum_mix}
    return ChunkCoefficients(beta, gamma, mix, decay, mom_mix)  # type: ignore[arg-type]


class _Recompute(torch.autograd.Function):
    """``run(*tensors)``, keeping only ``tensors`` for the backward pass."""

    @staticmethod
    def forward(ctx: Any, run: Callable[..., tuple[Tensor, ...]], *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.run = run
        ctx.save_for_backward(*tensors)
        return run(*tensors)  # autograd.Function.forward runs without recording

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            outs = ctx.run(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        result: list[Tensor | None] = [None] * len(inputs)
        if pairs and wanted:
            got = torch.autograd.grad(
                [o for o, _ in pairs],
                [inputs[i] for i in wanted],
                [g for _, g in pairs],
                allow_unused=True,
                create_graph=torch.is_grad_enabled(),
            )
            for i, g in zip(wanted, got):
                result[i] = g
        return (None, *result)


def recompute_block(
    step: Callable[..., tuple[Tensor, Weights, Weights, Weights | None]],
    memory: Any,
    objective: Any,
    lr_keys: dict[str, str],
    chunk: int,
    anchor: Weights,
    weights: Weights,
    momentum: Weights,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    coef: ChunkCoefficients,
) -> tuple[Tensor, Weights, Weights]:
    """``step(...)`` for one block that ends at a chunk boundary, recomputed in the backward.

    Returns the block's retrievals and the weights and momentum after it.
    """
    names = list(weights)
    uses_momentum = coef.momentum_decay is not None
    same_anchor = anchor is weights
    slots: list[Tensor | None] = [q, k, v, *_coef_tensors(coef), *weights.values(), *momentum.values()]
    if not same_anchor:
        slots += list(anchor.values())
    present = [i for i, t in enumerate(slots) if t is not None]

    def run(*tensors: Tensor) -> tuple[Tensor, ...]:
        full: list[Tensor | None] = list(slots)
        for i, t in zip(present, tensors):
            full[i] = t
        qq, kk, vv = full[0], full[1], full[2]
        n_coef = len(_coef_tensors(coef))
        cc = _coef_from(coef, full[3 : 3 + n_coef])
        rest = full[3 + n_coef :]
        w = dict(zip(names, rest[: len(names)]))
        m = dict(zip(names, rest[len(names) : 2 * len(names)]))
        a = w if same_anchor else dict(zip(names, rest[2 * len(names) :]))
        y, new_w, new_m, _ = step(
            memory, objective, lr_keys, chunk, a, w, m, qq, kk, vv, cc, torch.is_grad_enabled(), False
        )
        outs = [y, *new_w.values()]
        if uses_momentum:
            outs += list(new_m.values())
        return tuple(outs)

    outs = _Recompute.apply(run, *[slots[i] for i in present])
    y, rest = outs[0], outs[1:]
    new_w = dict(zip(names, rest[: len(names)]))
    new_m = dict(zip(names, rest[len(names) :])) if uses_momentum else dict(momentum)
    return y, new_w, new_m
