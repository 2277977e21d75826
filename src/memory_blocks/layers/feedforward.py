"""SwiGLU feed-forward (Shazeer 2020), the Llama-style MLP of every Titans block."""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["SwiGLU"]


class SwiGLU(nn.Module):
    """``y = W_down (silu(W_gate x) * (W_up x))``.

    ``W_gate`` and ``W_up`` are stored as one ``Linear(dim, 2 * hidden)`` (one matmul); the
    gate is the first half of its output.

    Args:
        dim: input and output features.
        hidden: inner features. ``None`` gives Llama's choice: ``8 * dim / 3`` (the parameter
            count of a 4x GELU MLP) rounded up to a multiple of ``multiple_of``. An explicit
            ``hidden`` is used as given.
        multiple_of: rounding of the default ``hidden`` (>= 1).
        bias: add biases to the three projections.
    """

    def __init__(
        self, dim: int, hidden: int | None = None, *, multiple_of: int = 64, bias: bool = False
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"SwiGLU: dim must be >= 1, got {dim}")
        if multiple_of < 1:
            raise ValueError(f"SwiGLU: multiple_of must be >= 1, got {multiple_of}")
        if hidden is None:
            hidden = -(-(8 * dim) // (3 * multiple_of)) * multiple_of
        elif hidden < 1:
            raise ValueError(f"SwiGLU: hidden must be >= 1, got {hidden}")
        self.dim = dim
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        if x.shape[-1] != self.dim:
            raise ValueError(f"SwiGLU: expected last dimension {self.dim}, got {x.shape[-1]}")
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)

    def extra_repr(self) -> str:
        return f"{self.dim}, hidden={self.hidden}"
