"""Gates: the data-dependent scalars theta (learning rate), eta (momentum), alpha (forgetting).

A gate maps the tokens ``x`` ``(batch, seq, dim)`` to one value per (batch, head, token),
shape ``(batch, heads, seq)`` (paper eqs. 13-14: ``theta_t``, ``eta_t``, ``alpha_t`` are
functions of ``x_t``). :class:`LearnedGate` is ``max_value * sigmoid(w . x_t + b)`` per head,
initialised so that every token starts at ``init``; :class:`ConstantGate` is a fixed value.
With ``names``, a learned gate gives each named fast-weight tensor its own value (the
camera-ready's per-layer step sizes), returned as a dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["ConstantGate", "DECAY_INIT", "Gate", "LearnedGate", "decay_range"]

#: The learned forgetting gate's start value without a ceiling (eq. 13's ``alpha``).
DECAY_INIT = 0.01

GateOutput = Float[Tensor, "batch heads seq"] | dict[str, Float[Tensor, "batch heads seq"]]


class Gate(nn.Module):
    """Base class of gates: ``forward(x) -> (batch, heads, seq)`` (or a dict of those)."""

    heads: int

    def forward(self, x: Float[Tensor, "batch seq dim"]) -> GateOutput:
        raise NotImplementedError


class LearnedGate(Gate):
    """``max_value * sigmoid(W x_t + b)``, one value per head (and per named tensor).

    Args:
        dim: features of the input tokens.
        heads: memory heads.
        init: value of the gate at initialisation, for every token (strictly between 0 and
            ``max_value``).
        max_value: upper bound of the gate (``theta_max`` for the learning rate; 1 for eta
            and alpha).
        names: fast-weight names; when given, the gate returns a dict with one value per name.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        init: int | float,
        max_value: int | float = 1.0,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        bad = [n for n, v in (("dim", dim), ("heads", heads)) if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise ValueError(f"LearnedGate: dim and heads must be integers >= 1, got {dim!r} and {heads!r}")
        if dim < 1 or heads < 1:
            raise ValueError(f"LearnedGate: dim and heads must be >= 1, got {dim} and {heads}")
        if not (max_value > 0 and math.isfinite(max_value)):
            raise ValueError(f"LearnedGate: max_value must be > 0 and finite, got {max_value}")
        if not 0 < init < max_value:
            raise ValueError(
                f"LearnedGate: init must lie strictly between 0 and max_value={max_value}, got {init}"
            )
        p = init / max_value
        if not 0 < p < 1 or not math.isfinite(math.log(p / (1 - p))):
            raise ValueError(
                f"LearnedGate: init={init} and max_value={max_value} are too far apart (init / "
                f"max_value = {p:g} rounds to 0 or 1 and the gate's bias would be infinite)"
            )
        self.heads = heads
        self.max_value = max_value
        self.init = init
        self.names = None if names is None else tuple(names)
        width = heads * (1 if self.names is None else len(self.names))
        self.proj = nn.Linear(dim, width)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.constant_(self.proj.bias, math.log(p / (1 - p)))

    def forward(self, x: Float[Tensor, "batch seq dim"]) -> GateOutput:
        g = torch.sigmoid(self.proj(x)) * self.max_value  # (batch, seq, heads * n)
        if self.names is None:
            return g.transpose(1, 2)
        g = g.unflatten(-1, (len(self.names), self.heads)).permute(2, 0, 3, 1)
        return {name: g[i] for i, name in enumerate(self.names)}

    def extra_repr(self) -> str:
        names = "" if self.names is None else f", names={list(self.names)}"
        return f"heads={self.heads}, init={self.init}, max_value={self.max_value}{names}"


def decay_range(init: float | None, max_value: float | None) -> tuple[float, float]:
    """The learned forgetting gate's ``(init, max_value)``, ``None`` resolved: a ceiling of 1, a
    start at ``min(DECAY_INIT, max_value / 10)`` (below the ceiling, whatever it is)."""
    ceiling = 1.0 if max_value is None else max_value
    return (min(DECAY_INIT, ceiling / 10) if init is None else init), ceiling


class ConstantGate(Gate):
    """The same value for every token and head (no parameters).

    Args:
        value: the gate's value, a finite number >= 0.
        heads: the number of heads the output has (>= 1).

    Raises:
        TypeError: when ``value`` is not a number.
        ValueError: on a negative or non-finite ``value``, or ``heads`` not an integer >= 1.
    """

    def __init__(self, value: int | float, heads: int = 1) -> None:
        super().__init__()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"ConstantGate: value must be a number, got {type(value).__name__}")
        if not (0 <= value and math.isfinite(value)):
            raise ValueError(f"ConstantGate: value must be >= 0 and finite, got {value}")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"ConstantGate: heads must be an integer >= 1, got {heads!r}")
        self.value = float(value)
        self.heads = heads

    def forward(self, x: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch heads seq"]:
        return x.new_full((x.shape[0], self.heads, x.shape[1]), self.value)

    def extra_repr(self) -> str:
        return f"value={self.value}, heads={self.heads}"
