"""Checks of the design-space arguments of ``memorize`` / ``memorize_naive`` (retention, Omega
rule, Muon), and the Omega window a call starts from."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.state import MemoryState
from memory_blocks.functional.validate import as_float, check_gate_ranges, check_integer

__all__ = ["DesignArgs", "check_design_args", "start_window"]


class DesignArgs:
    """The checked arguments: ``retention`` (``None`` for the identity readout), ``window``
    (``c``), ``weight`` (the Omega weights ``(batch, heads, seq)``, or ``None``: all 1) and
    ``steps`` (Newton-Schulz steps, 0 without Muon)."""

    def __init__(self, retention: Any, window: int, weight: Tensor | None, steps: int) -> None:
        self.retention, self.window, self.weight, self.steps = retention, window, weight, steps

    @property
    def extended(self) -> bool:
        """Whether a rule the fast paths do not take is on."""
        return self.retention is not None or self.window > 1 or self.weight is not None or self.steps > 0


def check_design_args(
    fn: str,
    k: Tensor,
    retention: Any,
    omega_window: object,
    omega_weights: object,
    newton_schulz_steps: object,
    momentum: Tensor | None,
    state: MemoryState | None,
    check_gates: bool,
) -> DesignArgs:
    """Validates the design-space arguments; raises ``ValueError``/``TypeError`` naming them."""
    if retention is not None:
        if not (callable(getattr(retention, "readout", None)) and hasattr(retention, "linear")):
            raise TypeError(
                f"{fn}: retention must be a Retention (with readout and linear), got {type(retention).__name__}"
            )
        if retention.linear:
            retention = None
    window = check_integer(fn, "omega_window", omega_window, 1)
    steps = check_integer(fn, "newton_schulz_steps", newton_schulz_steps, 0)
    if steps and momentum is None:
        raise ValueError(
            f"{fn}: Muon (newton_schulz_steps = {steps}) orthogonalises the momentum; pass a momentum "
            "gate (0 for none)"
        )
    batch, heads, seq, _ = k.shape
    weight = None
    if omega_weights is not None:
        if isinstance(omega_weights, (int, float)) and not isinstance(omega_weights, bool):
            value = as_float(omega_weights)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{fn}: omega_weights must be finite and >= 0, got {value}")
            weight = k.new_full((batch, heads, seq), value)
        elif isinstance(omega_weights, Tensor):
            if tuple(omega_weights.shape) != (batch, heads, seq):
                raise ValueError(
                    f"{fn}: omega_weights must have shape (batch, heads, seq) = {(batch, heads, seq)}, "
                    f"got {tuple(omega_weights.shape)}"
                )
            if omega_weights.dtype != k.dtype:
                raise ValueError(f"{fn}: omega_weights has dtype {omega_weights.dtype} but the keys have {k.dtype}")
            weight = omega_weights
            if check_gates:
                check_gate_ranges(fn, [("omega_weights", "lr", weight)])
        else:
            raise TypeError(
                f"{fn}: omega_weights must be a tensor of shape (batch, heads, seq), a number or None, "
                f"got {type(omega_weights).__name__}"
            )
    if state is not None and state.window is not None:
        n = state.window["weight"].shape[-1]
        if window == 1 or n != window - 1:
            raise ValueError(
                f"{fn}: the state carries an Omega window of {n} tokens, this call has omega_window = "
                f"{window} (a state continues only the window it was made with)"
            )
        expected = {"k": (batch, heads, n, k.shape[-1]), "weight": (batch, heads, n)}
        for key, shape in expected.items():
            if tuple(state.window[key].shape) != shape:
                raise ValueError(
                    f"{fn}: state.window[{key!r}] has shape {tuple(state.window[key].shape)}, expected {shape}"
                )
    return DesignArgs(retention, window, weight, steps)


def start_window(
    state: MemoryState | None, k: Tensor, v: Tensor, window: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``window - 1`` tokens before the call: the state's, or zeros with weight 0."""
    if state is not None and state.window is not None:
        return state.window["k"], state.window["v"], state.window["weight"]
    batch, heads = k.shape[:2]
    n = window - 1
    zeros = torch.zeros((), dtype=k.dtype, device=k.device)
    return (
        zeros.expand(batch, heads, n, k.shape[-1]),
        zeros.expand(batch, heads, n, v.shape[-1]),
        zeros.expand(batch, heads, n),
    )
