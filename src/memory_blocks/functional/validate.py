"""Cheap checks of the arguments of the memory functions, with errors that name the problem."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.state import MemoryState

__all__ = ["FORGET_TARGETS", "check_forget_target", "check_memorize_args", "check_state"]

#: Where the forgetting of eq. 14 pulls the fast weights: ``"zero"`` (the paper) or ``"init"``
#: (the memory's initial weights ``W_0``).
FORGET_TARGETS = ("zero", "init")


def check_forget_target(fn: str, forget_target: object) -> None:
    """Refuses a ``forget_target`` that is not one of :data:`FORGET_TARGETS`."""
    if not isinstance(forget_target, str) or forget_target not in FORGET_TARGETS:
        raise ValueError(f"{fn}: forget_target must be one of {FORGET_TARGETS}, got {forget_target!r}")


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_memorize_args(
    fn: str,
    memory: Any,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor | dict[str, Tensor],
    momentum: Tensor | None,
    decay: Tensor | None,
    chunk_size: object,
    state: MemoryState | None,
) -> dict[str, Tensor]:
    """Validates the arguments of ``memorize``/``memorize_naive``; returns lr per fast weight."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{fn}: the memory writes by taking gradients, which torch.inference_mode() forbids; "
            "use torch.no_grad() instead (it is as fast here)"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be an integer >= 1, got {chunk_size!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(
                f"{fn}: {name} must have shape (batch, heads, seq, features), got {_shape(t)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"{fn}: q and k must have the same shape, got {_shape(q)} and {_shape(k)}")
    batch, heads, seq, dim_in = k.shape
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"{fn}: v must share (batch, heads, seq) = {(batch, heads, seq)} with k, "
            f"got {_shape(v)}"
        )
    if seq < 1:
        raise ValueError(f"{fn}: the sequence is empty (seq = 0)")
    if dim_in != memory.dim_in:
        raise ValueError(
            f"{fn}: keys and queries have {dim_in} features but the memory model expects "
            f"dim_in = {memory.dim_in}"
        )
    if v.shape[-1] != memory.dim_out:
        raise ValueError(
            f"{fn}: values have {v.shape[-1]} features but the memory model produces "
            f"dim_out = {memory.dim_out}"
        )
    if q.dtype != k.dtype or v.dtype != k.dtype:
        raise ValueError(f"{fn}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    names = list(memory.initial_weights())
    if isinstance(lr, dict):
        if set(lr) != set(names):
            raise ValueError(
                f"{fn}: a per-tensor lr must name exactly the memory's fast weights {sorted(names)}, "
                f"got {sorted(lr)}"
            )
        lr_map = dict(lr)
    else:
        lr_map = {n: lr for n in names}
    gates = [(f"lr[{n!r}]" if isinstance(lr, dict) else "lr", g) for n, g in lr_map.items()]
    gates += [("momentum", momentum), ("decay", decay)]
    for name, g in gates:
        if g is None:
            continue
        if g.shape != (batch, heads, seq):
            raise ValueError(
                f"{fn}: {name} must have shape (batch, heads, seq) = {(batch, heads, seq)}, "
                f"got {_shape(g)}"
            )
        if g.dtype != k.dtype:
            raise ValueError(f"{fn}: {name} has dtype {g.dtype} but the keys have {k.dtype}")
    if state is not None:
        check_state(fn, memory, state, batch, heads, chunk_size)
    return lr_map


def check_state(
    fn: str, memory: Any, state: MemoryState, batch: int, heads: int, chunk_size: int | None
) -> None:
    """Checks that ``state`` fits ``memory`` and the (batch, heads) of the inputs."""
    init = memory.initial_weights()
    if set(state.weights) != set(init):
        raise ValueError(
            f"{fn}: the state holds fast weights {sorted(state.weights)} but the memory model has "
            f"{sorted(init)}"
        )
    for name, w0 in init.items():
        expected = (batch, heads, *w0.shape)
        if tuple(state.weights[name].shape) != expected:
            raise ValueError(
                f"{fn}: state.weights[{name!r}] has shape {_shape(state.weights[name])}, expected "
                f"{expected} (batch, heads, *parameter shape)"
            )
        if state.chunk_weights is not None and tuple(state.chunk_weights[name].shape) != expected:
            raise ValueError(
                f"{fn}: state.chunk_weights[{name!r}] has shape "
                f"{_shape(state.chunk_weights[name])}, expected {expected}"
            )
    if chunk_size is not None and state.offset >= chunk_size:
        raise ValueError(
            f"{fn}: the state is {state.offset} tokens into a chunk, which does not fit "
            f"chunk_size = {chunk_size} (was it made with another chunk size?)"
        )
