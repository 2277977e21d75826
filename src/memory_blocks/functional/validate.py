"""Cheap checks of the arguments of the memory functions, with errors that name the problem."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.state import MemoryState

__all__ = [
    "FORGET_TARGETS",
    "GATE_RANGES",
    "as_float",
    "check_dtype",
    "check_forget_target",
    "check_gate_ranges",
    "check_integer",
    "check_layer_input",
    "check_memorize_args",
    "check_state",
    "check_tensor",
    "memory_dtype",
]

#: Where the forgetting of eq. 14 pulls the fast weights: ``"zero"`` (the paper) or ``"init"``
#: (the memory's initial weights ``W_0``).
FORGET_TARGETS = ("zero", "init")


def check_forget_target(fn: str, forget_target: object) -> None:
    """Refuses a ``forget_target`` that is not one of :data:`FORGET_TARGETS`."""
    if not isinstance(forget_target, str) or forget_target not in FORGET_TARGETS:
        raise ValueError(f"{fn}: forget_target must be one of {FORGET_TARGETS}, got {forget_target!r}")


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


#: The closed range each gate must lie in: ``theta >= 0`` (finite; a negative step climbs the
#: inner loss), ``eta`` in ``[0, 1]`` (a momentum above 1 grows without a gradient), ``alpha``
#: in ``[0, 1]`` (``1`` forgets everything, above 1 flips the sign of the weights).
GATE_RANGES = {"lr": (0.0, math.inf), "momentum": (0.0, 1.0), "decay": (0.0, 1.0)}

def check_integer(fn: str, name: str, value: object, minimum: int) -> int:
    """Refuses ``value`` unless it is an ``int`` (not a ``bool``) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum} (an integer), got {value!r}")
    return value


def check_tensor(fn: str, name: str, value: object) -> Tensor:
    """Refuses anything but a floating-point tensor, naming the argument."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{fn}: {name} must be a floating-point tensor, got {value.dtype}")
    return value


def memory_dtype(memory: Any) -> torch.dtype | None:
    """The dtype of the memory model's initial fast weights (``None`` if it has none)."""
    for w0 in memory.initial_weights().values():
        return w0.dtype
    return None


def check_dtype(fn: str, name: str, t: Tensor, dtype: torch.dtype | None) -> None:
    """The dtype rule: every tensor fed to a memory has the memory's dtype (no silent cast)."""
    if dtype is not None and t.dtype != dtype:
        raise ValueError(
            f"{fn}: {name} has dtype {t.dtype} but the memory model's weights have {dtype}; "
            f"convert one of them ({name}.to({dtype}) or memory.to({t.dtype}))"
        )


def check_layer_input(fn: str, name: str, t: object, weight: Tensor) -> Tensor:
    """The dtype rule of the layers: an input has the dtype and device of the layer's weights.

    Under ``torch.autocast`` on the input's device other floating dtypes are accepted (autocast
    casts them), except float64 on either side, which autocast leaves alone.
    """
    t = check_tensor(fn, name, t)
    if t.device != weight.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but the layer is on {weight.device}")
    if t.dtype == weight.dtype:
        return t
    if torch.is_autocast_enabled(t.device.type) and torch.float64 not in (t.dtype, weight.dtype):
        return t
    raise ValueError(
        f"{fn}: {name} has dtype {t.dtype} but the layer's parameters have {weight.dtype}; convert "
        f"the input ({name}.to({weight.dtype})) or the layer (layer.to({t.dtype})), or run under "
        "torch.autocast (float32 inputs and parameters)"
    )


def as_float(number: int | float) -> float:
    """``float(number)``, with an integer too large for a float read as +-inf."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _gate_tensor(fn: str, name: str, kind: str, g: object, like: Tensor) -> Tensor:
    """A gate given as a tensor, or as a Python number broadcast to ``(batch, heads, seq)``."""
    shape = tuple(like.shape[:3])
    if isinstance(g, (int, float)) and not isinstance(g, bool):
        value = as_float(g)
        _check_range(fn, name, kind, value, value)
        return like.new_full(shape, value)
    if not isinstance(g, Tensor):
        raise TypeError(
            f"{fn}: {name} must be a tensor of shape (batch, heads, seq) or a Python number, "
            f"got {type(g).__name__}"
        )
    if g.shape != shape:
        raise ValueError(
            f"{fn}: {name} must have shape (batch, heads, seq) = {shape}, got {_shape(g)}"
        )
    if g.dtype != like.dtype:
        raise ValueError(f"{fn}: {name} has dtype {g.dtype} but the keys have {like.dtype}")
    return g


def _check_range(fn: str, name: str, kind: str, low: float, high: float) -> None:
    lo, hi = GATE_RANGES[kind]
    if not (lo <= low and high <= hi and math.isfinite(low) and math.isfinite(high)):
        allowed = f"in [{lo:g}, {hi:g}]" if math.isfinite(hi) else f"finite and >= {lo:g}"
        bad = low if not (lo <= low and math.isfinite(low)) else high
        raise ValueError(f"{fn}: {name} must be {allowed}, got a value of {bad}")


def check_gate_ranges(fn: str, gates: list[tuple[str, str, Tensor]]) -> None:
    """Refuses gate values outside :data:`GATE_RANGES` (nan and inf included).

    One reduction per gate and one host synchronisation for all of them; on failure the gates
    are looked at one by one to name the culprit.
    """
    if not gates:
        return
    with torch.no_grad():
        ok = []
        for _, kind, g in gates:
            lo, hi = GATE_RANGES[kind]
            low, high = torch.aminmax(g)
            ok.append((low >= lo) & (high <= hi) & torch.isfinite(high) & torch.isfinite(low))
        if bool(torch.stack(ok).all()):
            return
        for name, kind, g in gates:
            low, high = torch.aminmax(g)
            if torch.isnan(low) or torch.isnan(high):
                raise ValueError(f"{fn}: {name} holds nan; every value must be a real number")
            _check_range(fn, name, kind, float(low), float(high))


def check_memorize_args(
    fn: str,
    memory: Any,
    q: Any,
    k: Any,
    v: Any,
    lr: Any,
    momentum: Any,
    decay: Any,
    chunk_size: object,
    state: MemoryState | None,
    check_gates: bool = True,
) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
    """Validates the arguments of ``memorize``/``memorize_naive``.

    Returns ``lr`` per fast weight, ``momentum`` and ``decay``, each a ``(batch, heads, seq)``
    tensor (a Python number broadcast to that shape in the keys' dtype), or ``None``. With
    ``check_gates=False`` the values of gate tensors are not scanned (their shapes, dtypes and
    devices still are; numbers always are).
    """
    # (dynamo cannot trace the inference-mode query; under torch.compile the check is skipped)
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{fn}: the memory writes by taking gradients, which torch.inference_mode() forbids; "
            "use torch.no_grad() instead (it is as fast here)"
        )
    check_integer(fn, "chunk_size", chunk_size, 1)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(fn, name, t)
        if t.ndim != 4:
            raise ValueError(
                f"{fn}: {name} must have shape (batch, heads, seq, features), got {_shape(t)}"
            )
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
    if batch < 1 or heads < 1:
        raise ValueError(f"{fn}: batch and heads must be >= 1, got {batch} and {heads}")
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
    if q.device != k.device or v.device != k.device:
        raise ValueError(f"{fn}: q, k, v must share a device, got {q.device}, {k.device}, {v.device}")
    check_dtype(fn, "k", k, memory_dtype(memory))
    scanned: list[tuple[str, str, Tensor]] = []

    def gate(name: str, kind: str, g: object) -> Tensor:
        t = _gate_tensor(fn, name, kind, g, k)
        if isinstance(g, Tensor) and check_gates:  # a number was checked as it was broadcast
            scanned.append((name, kind, t))
        return t

    names = list(memory.initial_weights())
    if isinstance(lr, dict):
        if set(lr) != set(names):
            raise ValueError(
                f"{fn}: a per-tensor lr must name exactly the memory's fast weights {sorted(names)}, "
                f"got {sorted(lr)}"
            )
        lr_map = {n: gate(f"lr[{n!r}]", "lr", lr[n]) for n in names}
    else:
        if lr is None:
            raise TypeError(f"{fn}: lr must be a tensor, a Python number or a dict, got None")
        lr_t = gate("lr", "lr", lr)
        lr_map = {n: lr_t for n in names}
    mom_t = None if momentum is None else gate("momentum", "momentum", momentum)
    dec_t = None if decay is None else gate("decay", "decay", decay)
    check_gate_ranges(fn, scanned)
    if state is not None:
        check_state(fn, memory, state, batch, heads, chunk_size, like=k)
    return lr_map, mom_t, dec_t


def check_state(
    fn: str,
    memory: Any,
    state: object,
    batch: int,
    heads: int,
    chunk_size: int | None,
    *,
    like: Tensor | None = None,
) -> None:
    """Checks that ``state`` fits ``memory``, the (batch, heads) of the inputs, their dtype and
    device (``like``), and the chunk size it was made with (when it carries one)."""
    if not isinstance(state, MemoryState):
        raise TypeError(f"{fn}: state must be a MemoryState or None, got {type(state).__name__}")
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
        parts = [("weights", state.weights), ("momentum", state.momentum)]
        if state.chunk_weights is not None:
            parts.append(("chunk_weights", state.chunk_weights))
        for part, d in parts:
            t = d[name]
            if t.dtype != w0.dtype:
                raise ValueError(
                    f"{fn}: state.{part}[{name!r}] has dtype {t.dtype} but the memory model's "
                    f"weights have {w0.dtype}"
                )
            if like is not None and t.device != like.device:
                raise ValueError(
                    f"{fn}: state.{part}[{name!r}] is on {t.device} but the inputs are on "
                    f"{like.device}"
                )
    if chunk_size is not None and state.chunk_size is not None and state.chunk_size != chunk_size:
        raise ValueError(
            f"{fn}: the state was made with chunk_size = {state.chunk_size} but this call has "
            f"chunk_size = {chunk_size}; a state continues only the chunking it was made with"
        )
    if chunk_size is not None and state.offset >= chunk_size:
        raise ValueError(
            f"{fn}: the state is {state.offset} tokens into a chunk, which does not fit "
            f"chunk_size = {chunk_size} (was it made with another chunk size?)"
        )
