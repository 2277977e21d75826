"""Recomputing a block in the backward pass instead of storing its activations.

The block runs once without recording (so its inner gradients are taken without building a
graph), keeping only its input tensors; the backward pass runs it again with recording and
differentiates that. Unlike ``torch.utils.checkpoint`` this works with ``torch.autograd.grad``
as well as ``.backward()``, and skips the graph of the first run entirely.

For a factored memory the second run reads the block's input weight matrices through a
:class:`~memory_blocks.functional.memorize_op.weight_tape.WeightTape`, so that each one's gradient from all
its reads is one product instead of a sum of full-size tensors (not when the backward pass is
itself recorded, which keeps plain autograd).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.memorize_op.anchored import Anchored
from memory_blocks.functional.memorize_op.fast_ops import Reader
from memory_blocks.functional.memorize_op.recurrence import ChunkCoefficients
from memory_blocks.functional.memorize_op.weight_tape import WeightTape

__all__ = ["input_gradients", "recompute_block"]

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
    """``run(*tensors)``, keeping only ``tensors`` for the backward pass.

    ``taped`` lists the positions of the tensors whose reads ``run(*tensors, read=...)`` may
    record on a weight tape (``None``: ``run`` takes no ``read``). With ``keep`` the forward
    records its graph and keeps it for the backward pass instead (no recomputation; more memory).
    """

    @staticmethod
    def forward(
        ctx: Any,
        run: Callable[..., tuple[Tensor, ...]],
        taped: list[int] | None,
        keep: bool,
        *tensors: Tensor,
    ) -> tuple[Tensor, ...]:
        ctx.run, ctx.taped, ctx.kept = run, taped, None
        ctx.set_materialize_grads(False)  # an unused output (the last block's weights) gets None
        ctx.save_for_backward(*tensors)
        if not keep:
            return run(*tensors)  # autograd.Function.forward runs without recording
        inputs, tape, outs = _record(run, taped, tensors)
        ctx.kept = (inputs, tape, outs)
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        create_graph = torch.is_grad_enabled()
        if ctx.kept is not None and not create_graph:
            inputs, tape, outs = ctx.kept
        else:
            # A recorded backward (create_graph) recomputes on the saved tensors themselves, so
            # that the gradients it returns stay connected to the graph that produced them.
            inputs, tape, outs = _record(
                ctx.run, None if create_graph else ctx.taped, ctx.saved_tensors, fresh=not create_graph
            )
        ctx.kept = None  # a recorded graph is used once; a second backward recomputes
        recorded = [] if tape is None else tape.outputs()
        result, got = input_gradients(outs, grads, inputs, recorded, create_graph=create_graph)
        if tape is not None and got is not None:
            wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
            summed = tape.gradients(got, {id(inputs[i]): result[i] for i in wanted})
            for i in wanted:
                result[i] = summed.get(id(inputs[i]), result[i])
        if tape is not None:
            tape.clear()
        return (None, None, None, *result)


def input_gradients(
    outs: tuple[Tensor, ...] | list[Tensor],
    grads: tuple[Tensor | None, ...],
    inputs: list[Tensor | None] | tuple[Tensor | None, ...],
    extra: list[Tensor] | None = None,
    *,
    create_graph: bool,
) -> tuple[list[Tensor | None], list[Tensor | None] | None]:
    """Gradients of ``inputs`` (``None`` where an input needs none, or is ``None``) and of
    ``extra`` tensors of a recorded graph, given the gradients ``grads`` arriving at its outputs
    ``outs``.

    Returns ``(input gradients, extra gradients)``; the second is ``None`` when nothing was
    differentiated (no output gradient, or no input that needs one).
    """
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    result: list[Tensor | None] = [None] * len(inputs)
    if not (pairs and wanted):
        return result, None
    extra = extra or []
    got = torch.autograd.grad(
        [o for o, _ in pairs],
        [inputs[i] for i in wanted] + extra,
        [g for _, g in pairs],
        allow_unused=True,
        create_graph=create_graph,
    )
    for i, g in zip(wanted, got):
        result[i] = g
    return result, list(got[len(wanted) :])


def _record(
    run: Callable[..., tuple[Tensor, ...]],
    taped: list[int] | None,
    tensors: tuple[Tensor, ...],
    fresh: bool = True,
) -> tuple[list[Tensor], WeightTape | None, tuple[Tensor, ...]]:
    """Runs ``run`` recording its graph (on fresh leaves, or with ``fresh`` false on aliases of
    ``tensors`` that stay connected to their graph; reads of ``taped`` on a weight tape)."""
    if fresh:
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
    else:
        # Aliases, so that an input's gradient counts only its direct uses in this block, not
        # the paths through another input that depends on it (W_0 with forget_target="init").
        inputs = [t.view_as(t) if t.requires_grad else t for t in tensors]
    tape = None
    if taped is not None:
        tape = WeightTape([inputs[i] for i in taped if inputs[i].requires_grad])
    with torch.enable_grad():
        outs = run(*inputs) if tape is None else run(*inputs, read=tape.read)
    return inputs, tape, outs


@torch.compiler.disable  # takes inner gradients with torch.autograd.grad: runs eagerly under torch.compile
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
    *,
    keep: bool = False,
) -> tuple[Tensor, Weights, Weights]:
    """``step(...)`` for one block that ends at a chunk boundary, recomputed in the backward
    (or, with ``keep``, recorded now and kept for the backward pass).

    Returns the block's retrievals and the weights and momentum after it.
    """
    names = list(weights)
    uses_momentum = coef.momentum_decay is not None
    same_anchor = anchor is weights
    slots: list[Tensor | None] = [q, k, v, *_coef_tensors(coef), *weights.values(), *momentum.values()]
    if not same_anchor:
        slots += list(anchor.values())
    n_weight_slots = len(slots) - 3 - len(_coef_tensors(coef))
    # A memory seen from W_0 (forget_target="init") reads W_0 too: an input like the others.
    base_names = list(memory.base) if isinstance(memory, Anchored) else []
    slots += [memory.base[n] for n in base_names]
    present = [i for i, t in enumerate(slots) if t is not None]

    def run(*tensors: Tensor, read: Reader | None = None) -> tuple[Tensor, ...]:
        full: list[Tensor | None] = list(slots)
        for i, t in zip(present, tensors):
            full[i] = t
        qq, kk, vv = full[0], full[1], full[2]
        n_coef = len(_coef_tensors(coef))
        cc = _coef_from(coef, full[3 : 3 + n_coef])
        rest = full[3 + n_coef :]
        w = dict(zip(names, rest[: len(names)]))
        m = dict(zip(names, rest[len(names) : 2 * len(names)]))
        a = w if same_anchor else dict(zip(names, rest[2 * len(names) : 3 * len(names)]))
        mem = memory
        if base_names:
            mem = Anchored(memory.memory, dict(zip(base_names, rest[len(rest) - len(base_names) :])))
        extra = {} if read is None else {"read": read}
        y, new_w, new_m, _ = step(
            mem, objective, lr_keys, chunk, a, w, m, qq, kk, vv, cc, torch.is_grad_enabled(), False,
            **extra,
        )
        outs = [y, *new_w.values()]
        if uses_momentum:
            outs += list(new_m.values())
        return tuple(outs)

    # The weight matrices a factored block reads through ``read``: the slots after the coefficients.
    first_weight = 3 + len(_coef_tensors(coef))
    last_weight = first_weight + n_weight_slots
    taped = [j for j, i in enumerate(present) if first_weight <= i < last_weight] if memory.factored else None
    outs = _Recompute.apply(run, taped, keep, *[slots[i] for i in present])
    y, rest = outs[0], outs[1:]
    new_w = dict(zip(names, rest[: len(names)]))
    new_m = dict(zip(names, rest[len(names) :])) if uses_momentum else dict(momentum)
    return y, new_w, new_m
