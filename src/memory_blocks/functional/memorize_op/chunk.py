"""The fast, exact, chunk-parallel form of the memory (paper eq. 16).

Across chunks the loop is sequential: a chunk's gradients are taken at the weights its
predecessor left. Inside a chunk everything is batched over tokens, batch and heads.

- ``MLPMemory`` and the bias-free ``LinearMemory`` with the squared error run each block that
  starts at a chunk boundary (a last one that ends inside a chunk too, as one short chunk)
  through :mod:`memory_blocks.functional.memorize_op.fused_block`: the
  block's forward and backward written out by hand, one autograd node (``checkpoint=True``:
  its forward runs again in the backward pass instead of keeping its intermediates, except one
  block in ``keep_every``).
- Other built-in memory models (``factored``) run in blocks of several chunks
  (:mod:`memory_blocks.functional.memorize_op.factored_block`): each token's gradient is kept as the factors of an
  outer product, every weight inside a block is read in the dual form from the closed-form
  momentum and forgetting recurrences (:func:`chunk_coefficients`), and full-size weights are
  written only once per block. Each block's graph is recorded and kept for the backward pass,
  or with ``checkpoint=True`` only its inputs are stored and it is recomputed (all but one
  block in ``keep_every``; :mod:`memory_blocks.functional.memorize_op.recompute`, also for the generic
  path below). For MLP-family memories, a streamed piece that starts inside a chunk takes
  this path for the rest of that chunk.
- Any other memory (``ModuleMemory``) runs chunk by chunk (:mod:`memory_blocks.functional.memorize_op.generic_chunk`)
  with ``torch.func`` per-token gradients and materialised per-token weights: exact, general,
  slower.
- A call with a design-space rule (a nonlinear retention readout, the Omega rule, Muon) runs
  chunk by chunk through :mod:`memory_blocks.functional.memorize_op.extended_chunk` (the fused
  and block paths do not take those rules), every chunk recomputed in the backward pass; a
  built-in memory with a per-chunk readout, or with a readout that only rescales (``l_q``, per
  token too), keeps its dual form there (:mod:`memory_blocks.functional.memorize_op.readout_chunk`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from memory_blocks.functional.memorize_op.anchored import Anchored, from_displacement, to_displacement
from memory_blocks.functional.memorize_op.design_args import DesignArgs, check_design_args, start_window
from memory_blocks.functional.memorize_op.extended_chunk import (
    Retained,
    extended_chunk,
    factored_extended_chunk,
    with_window,
)
from memory_blocks.functional.memorize_op.factored_block import factored_block
from memory_blocks.functional.memorize_op.generic_chunk import generic_chunk
from memory_blocks.functional.memorize_op.fused_block import fused_block
from memory_blocks.functional.losses import is_squared_error, squared_error
from memory_blocks.functional.memorize_op.recompute import recompute_block
from memory_blocks.functional.memorize_op.readout_chunk import readout_chunk, takes_dual_form
from memory_blocks.functional.memorize_op.recurrence import ChunkCoefficients, chunk_coefficients
from memory_blocks.functional.state import MemoryState
from memory_blocks.functional.validate import check_forget_target, check_memorize_args

__all__ = ["memorize"]


def memorize(
    memory: Any,
    q: Float[Tensor, "batch heads seq dim_in"],
    k: Float[Tensor, "batch heads seq dim_in"],
    v: Float[Tensor, "batch heads seq dim_out"],
    lr: Float[Tensor, "batch heads seq"] | float | dict[str, Float[Tensor, "batch heads seq"] | float],
    momentum: Float[Tensor, "batch heads seq"] | float | None = None,
    decay: Float[Tensor, "batch heads seq"] | float | None = None,
    *,
    chunk_size: int,
    state: MemoryState | None = None,
    objective: Callable[[Tensor, Tensor], Tensor] = squared_error,
    block_chunks: int = 4,
    checkpoint: bool = False,
    keep_every: int = 4,
    forget_target: str = "zero",
    check_gates: bool = True,
    compile_blocks: bool | str = False,
    retention: Any = None,
    omega_window: int = 1,
    omega_weights: Float[Tensor, "batch heads seq"] | float | None = None,
    newton_schulz_steps: int = 0,
) -> tuple[Float[Tensor, "batch heads seq dim_out"], MemoryState]:
    """Write ``(k_t, v_t)`` into the memory and read ``q_t``: the fast parallel form.

    Computes exactly what :func:`memorize_naive` computes (paper eqs. 12-16: gradients at the
    chunk-start weights, momentum ``eta``, forgetting ``alpha``, ``y_t = f(W_t; q_t)`` after
    token ``t``'s own write), with the same arguments and results.

    Args:
        memory: a memory model (``LinearMemory``, ``MLPMemory``, ... or ``ModuleMemory``).
        q, k: ``(batch, heads, seq, dim_in)`` queries and keys.
        v: ``(batch, heads, seq, dim_out)`` values.
        lr: ``theta``, ``(batch, heads, seq)``; or a dict giving each fast weight its own.
            Every value finite and ``>= 0``. Each gate (``lr``, a value of its dict,
            ``momentum``, ``decay``) may also be a Python number: the same value for every
            (batch, head, token), in the keys' dtype.
        momentum: ``eta`` in ``[0, 1]``, ``(batch, heads, seq)``; ``None`` for plain gradient descent.
        decay: ``alpha`` in ``[0, 1]``, ``(batch, heads, seq)``; ``None`` for no forgetting.
        chunk_size: tokens per chunk (chunk boundaries are counted from the sequence start,
            across calls when a state is carried).
        state: where a previous call left the memory; ``None`` starts at ``W_0``.
        objective: per-token inner loss ``(pred, target) -> loss``; squared error by default.
        block_chunks: chunks per block of the fast path (weights are materialised once per
            block; the cost of reading a chunk's gradient point grows with its place in the
            block). Does not change the result.
        checkpoint: when gradients are recorded, keep only each block's inputs and recompute
            the block in the backward pass (less memory, one more forward without recording;
            on the hand-written path of MLP memories it saves little, since the block's start
            weights dominate what is kept).
        keep_every: with ``checkpoint``, one block in every ``keep_every`` (0: none) keeps its
            recorded graph instead of being recomputed: a trade of memory for time that stays
            the same fraction at every length. Does not change the result.
        forget_target: ``"zero"`` (eq. 14) or ``"init"``: forget towards the memory's initial
            weights ``W_0`` (:mod:`memory_blocks.functional.memorize_op.anchored`).
        check_gates: scan the gate tensors' values for their ranges (one reduction per gate
            and one host synchronisation per call). :class:`~memory_blocks.NeuralMemory` turns
            it off: its gates are in range by construction (sigmoid-bounded learned gates,
            constants checked when the layer is built), and a gate that became nan inside a
            diverging model is then a divergence that reaches the output (where training's
            finite checks report it), not a bad argument.
        compile_blocks: run the hand-written block (MLP-family and linear memories with the
            squared error) through ``torch.compile``: ``True`` with the default compiler
            (Triton kernels on a GPU), or a backend's name (``"aot_eager"``, ...). Each block
            shape is compiled once and reused by every block of that shape, so the compile
            time does not grow with the sequence; it removes most of the per-operation launches
            of a block on a GPU. Does not change the result (up to the compiler's rounding).
        retention, omega_window, omega_weights, newton_schulz_steps: the design-space rules
            (a nonlinear retention readout, the Omega rule, Muon), exactly as in
            :func:`memorize_naive`. Any of them sends the call down the general path
            (:mod:`memory_blocks.functional.memorize_op.extended_chunk`), one chunk at a time,
            whatever the memory model; the linear :class:`~memory_blocks.L2Decay` does not.

    Returns:
        ``y`` of shape ``(batch, heads, seq, dim_out)`` and the new :class:`MemoryState`
        (its subnormal entries set to zero, :meth:`MemoryState.without_subnormals`; tagged
        with ``chunk_size``, so that a call with another chunk size refuses it).

    Raises:
        ValueError: on a bad shape, an empty sequence, a gate outside its range (nan and inf
            included), a chunk size that is not an integer >= 1, tensors whose dtype differs
            from the memory model's weights (the dtype rule: no silent cast; under autocast
            :class:`~memory_blocks.NeuralMemory` casts to float32 itself), or a state that
            belongs to another memory model, batch, heads, dtype or chunk size.
        TypeError: on an argument of the wrong kind (a gate that is neither a tensor nor a
            number, a state that is not a :class:`MemoryState`).
        RuntimeError: under ``torch.inference_mode()`` (use ``torch.no_grad()``).

    Values of ``q``, ``k``, ``v`` are the caller's data and are not scanned: a nan or inf
    there passes through to ``y`` and the state.
    """
    lr_map, momentum, decay = check_memorize_args(
        "memorize", memory, q, k, v, lr, momentum, decay, chunk_size, state, check_gates
    )
    if isinstance(block_chunks, bool) or not isinstance(block_chunks, int) or block_chunks < 1:
        raise ValueError(f"memorize: block_chunks must be an integer >= 1, got {block_chunks!r}")
    if not isinstance(compile_blocks, (bool, str)):
        raise TypeError(f"memorize: compile_blocks must be True, False or a backend's name, got {compile_blocks!r}")
    if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 0:
        raise ValueError(f"memorize: keep_every must be an integer >= 0, got {keep_every!r}")
    check_forget_target("memorize", forget_target)
    design = check_design_args(
        "memorize", k, retention, omega_window, omega_weights, newton_schulz_steps, momentum,
        state, check_gates,
    )
    if design.extended:
        return _memorize_extended(
            memory, q, k, v, isinstance(lr, dict), lr_map, momentum, decay, chunk_size, state,
            objective, forget_target, design,
        )
    batch, heads, seq, _ = k.shape
    if state is None:
        state = memory.init_state(batch, heads)
    base = None
    if forget_target == "init" and decay is not None:
        # The literal recurrence on D = W - W_0, read through f(W_0 + D; x).
        base = memory.initial_weights()
        memory = Anchored(memory, base)
        state = to_displacement(state, base)
    if isinstance(lr, dict):
        lr_keys = {n: n for n in lr_map}
        lr_tensors = dict(lr_map)
    else:
        lr_keys = {n: "" for n in lr_map}
        lr_tensors = {"": lr_map[next(iter(lr_map))]}

    block = chunk_size * block_chunks if memory.factored else chunk_size
    segments, coefficients = _plan(state.offset, seq, chunk_size, block, lr_tensors, momentum, decay)
    step = factored_block if memory.factored else generic_chunk
    create_graph = torch.is_grad_enabled()
    ends_mid_chunk = (state.offset + seq) % chunk_size != 0

    spec = memory.fused_spec() if memory.factored and is_squared_error(objective) else None

    def reference(
        qq: Tensor, kk: Tensor, vv: Tensor, cc: ChunkCoefficients, ww: dict[str, Tensor], mm: dict[str, Tensor],
        bb: dict[str, Tensor] | None,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        mem = memory if bb is None else Anchored(memory.memory, bb)
        y, w, m, _ = factored_block(mem, objective, lr_keys, chunk_size, ww, ww, mm, qq, kk, vv, cc, True, False)
        return y, w, m

    weights, mom = dict(state.weights), dict(state.momentum)
    anchor = state.chunk_weights if state.chunk_weights is not None else weights
    ys: list[Tensor] = []
    last_anchor = None
    # One split per input (its backward concatenates once; slicing per segment would allocate
    # a full-length zero gradient per segment, quadratic in the sequence length).
    sizes = [e - s for s, e in segments]
    pieces = zip(q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2))
    for i, (coef, (qi, ki, vi)) in enumerate(zip(coefficients, pieces)):
        if i > 0:
            anchor = weights  # every segment after the first starts at a chunk boundary
        args = (
            memory, objective, lr_keys, chunk_size, anchor, weights, mom, qi, ki, vi, coef,
            create_graph, ends_mid_chunk and i == len(segments) - 1,
        )
        keep = not checkpoint or (keep_every > 0 and i % keep_every == 0)
        if spec is not None and anchor is weights:
            # MLP-family memory, squared error, a block that starts at a chunk boundary: the
            # hand-written block (one autograd node). A block that ends inside a chunk is that
            # chunk's first tokens alone (``_plan`` cuts it off): one chunk of their number,
            # every gradient at the chunk's start weights, which the state keeps as its anchor.
            partial = args[-1]
            if partial:
                last_anchor = anchor
            y, weights, mom = _block_function(compile_blocks)(
                spec, lr_keys, qi.shape[2] if partial else chunk_size, weights, mom, qi, ki, vi, coef,
                keep=keep, reference=reference, base=base,
            )
        elif create_graph and not args[-1]:
            # Every block that ends at a chunk boundary goes through recompute_block: recomputed
            # in the backward pass, or (without checkpointing, and one in keep_every with it)
            # recorded now and kept; either way its weight gradients are summed on a tape.
            y, weights, mom = recompute_block(step, *args[:-2], keep=keep)
        else:
            y, weights, mom, last_anchor = step(*args)
        ys.append(y)
    new_state = MemoryState(weights, mom, last_anchor if ends_mid_chunk else None,
                            (state.offset + seq) % chunk_size)
    if base is not None:
        new_state = from_displacement(new_state, base)
    new_state = dataclasses.replace(new_state, chunk_size=chunk_size)
    return torch.cat(ys, dim=2), new_state.without_subnormals()


def _memorize_extended(
    memory: Any,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr_is_dict: bool,
    lr_map: dict[str, Tensor],
    momentum: Tensor | None,
    decay: Tensor | None,
    chunk_size: int,
    state: MemoryState | None,
    objective: Callable[[Tensor, Tensor], Tensor],
    forget_target: str,
    design: DesignArgs,
) -> tuple[Tensor, MemoryState]:
    """``memorize`` with a design-space rule: every segment (a chunk, or the part of one at the
    ends of a streamed piece) through :func:`extended_chunk`, each recomputed in the backward
    pass (``checkpoint`` and ``keep_every`` do not apply)."""
    batch, heads, seq, _ = k.shape
    if state is None:
        state = memory.init_state(batch, heads)
    c = design.window
    tail_k, tail_v, tail_w = start_window(state, k, v, c)
    windowed = c > 1 or design.weight is not None
    gamma = design.weight if design.weight is not None else k.new_ones(batch, heads, seq)
    # Without a retention readout a built-in memory keeps the dual form (factored blocks of one
    # chunk); a readout, or a user's module, materialises each chunk's per-token weights.
    # (Always seen through Retained, whose ``factored`` is false: the recompute of a block then
    # keeps plain autograd instead of a weight tape.)
    factored = design.retention is None and memory.factored
    # A per-chunk readout keeps a built-in memory's dual form too (one chunk at a time), and so
    # does a readout that only rescales each matrix (l_q), per token.
    expanded = takes_dual_form(design.retention) and memory.factored and not windowed and design.steps == 0
    mem: Any = Retained(memory, design.retention)
    base = None
    if forget_target == "init" and decay is not None:
        base = memory.initial_weights()
        mem = Anchored(mem, base)
        state = to_displacement(state, base)
    if lr_is_dict:
        lr_keys = {n: n for n in lr_map}
        lr_tensors = dict(lr_map)
    else:
        lr_keys = {n: "" for n in lr_map}
        lr_tensors = {"": lr_map[next(iter(lr_map))]}
    segments, coefficients = _plan(state.offset, seq, chunk_size, chunk_size, lr_tensors, momentum, decay)
    kind = readout_chunk if expanded else factored_extended_chunk if factored else extended_chunk
    step = functools.partial(kind, newton_schulz_steps=design.steps)
    create_graph = torch.is_grad_enabled()
    ends_mid_chunk = (state.offset + seq) % chunk_size != 0
    weights, mom = dict(state.weights), dict(state.momentum)
    anchor = state.chunk_weights if state.chunk_weights is not None else weights
    ys: list[Tensor] = []
    last_anchor = None
    sizes = [e - s for s, e in segments]
    pieces = zip(q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2), gamma.split(sizes, dim=2))
    for i, (coef, (qi, ki, vi, gi)) in enumerate(zip(coefficients, pieces)):
        if i > 0:
            anchor = weights
        if windowed:
            # The segment's tokens after the c - 1 before them; Omega mixes the window's terms.
            ki, vi = torch.cat([tail_k, ki], dim=2), torch.cat([tail_v, vi], dim=2)
            wi = torch.cat([tail_w, gi], dim=2)
            coef = with_window(coef, wi, c)
            cut = ki.shape[2] - (c - 1)
            tail_k, tail_v, tail_w = ki[:, :, cut:], vi[:, :, cut:], wi[:, :, cut:]
        mid = ends_mid_chunk and i == len(segments) - 1
        args = (mem, objective, lr_keys, chunk_size, anchor, weights, mom, qi, ki, vi, coef, create_graph, mid)
        if create_graph and not mid:
            # Always recomputed in the backward pass: a chunk's recorded graph holds its per-token
            # weights (chunk x the fast weights), too much to keep for every chunk.
            y, weights, mom = recompute_block(step, *args[:-2], keep=False)
        else:
            y, weights, mom, last_anchor = step(*args)
        ys.append(y)
    new_state = MemoryState(weights, mom, last_anchor if ends_mid_chunk else None,
                            (state.offset + seq) % chunk_size)
    if base is not None:
        new_state = from_displacement(new_state, base)
    window = {"k": tail_k, "v": tail_v, "weight": tail_w} if c > 1 else None
    new_state = dataclasses.replace(new_state, chunk_size=chunk_size, window=window)
    return torch.cat(ys, dim=2), new_state.without_subnormals()


@functools.cache
def _compiled_block(backend: str) -> Callable[..., Any]:
    return torch.compile(fused_block, backend=backend, dynamic=False)


def _block_function(compile_blocks: bool | str) -> Callable[..., Any]:
    """``fused_block``, or its ``torch.compile``d form (one per backend, shared by every call:
    a block's graph is compiled once per shape and reused for every block of that shape)."""
    if compile_blocks is False:
        return fused_block
    return _compiled_block("inductor" if compile_blocks is True else compile_blocks)


def _plan(
    offset: int,
    seq: int,
    chunk: int,
    block: int,
    lr: dict[str, Tensor],
    momentum: Tensor | None,
    decay: Tensor | None,
) -> tuple[list[tuple[int, int]], list[ChunkCoefficients]]:
    """Splits ``[0, seq)`` into segments; computes every segment's coefficients.

    First the rest of an unfinished chunk (when a state is ``offset`` tokens into one), then
    blocks of ``block`` tokens (a multiple of ``chunk``), the last one possibly shorter and
    ending at a chunk boundary, then the first tokens of an unfinished last chunk. The full
    blocks' coefficients are computed in one batched call.
    """
    segments: list[tuple[int, int]] = []
    coefficients: list[ChunkCoefficients] = []

    def one(s: int, e: int) -> None:
        segments.append((s, e))
        coefficients.append(chunk_coefficients(*_gates(lr, momentum, decay, s, e, None)))

    first = min(chunk - offset, seq) if offset else 0
    if first:
        one(0, first)
    n_full = (seq - first) // block
    if n_full:
        stacked = chunk_coefficients(*_gates(lr, momentum, decay, first, first + n_full * block, block))
        coefficients.extend(stacked.unbind())
        for i in range(n_full):
            s = first + i * block
            segments.append((s, s + block))
    tail = first + n_full * block
    whole = tail + (seq - tail) // chunk * chunk  # the tail's last chunk boundary
    if tail < whole:
        one(tail, whole)
    if whole < seq:
        one(whole, seq)  # a chunk's first tokens, on their own
    return segments, coefficients


def _gates(
    lr: dict[str, Tensor],
    momentum: Tensor | None,
    decay: Tensor | None,
    s: int,
    e: int,
    block: int | None,
) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
    def cut(g: Tensor) -> Tensor:
        g = g[..., s:e]
        return g if block is None else g.unflatten(-1, (-1, block))

    return (
        {k: cut(t) for k, t in lr.items()},
        None if momentum is None else cut(momentum),
        None if decay is None else cut(decay),
    )
