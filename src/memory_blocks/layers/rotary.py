"""Rotary position embeddings (RoPE, Su et al. 2021), with explicit positions for streaming."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

__all__ = ["RotaryEmbedding"]


class RotaryEmbedding(nn.Module):
    """Rotates feature pairs ``(x_a, x_{a + dim/2})`` by the angle ``position * base^(-2a/dim)``.

    The "rotate half" layout (GPT-NeoX, Llama in Hugging Face): the first half of the features
    pairs with the second half. Scores between a rotated query at position ``i`` and a rotated
    key at ``j`` depend on ``i - j`` only, so streaming keeps exact positions by passing the
    absolute ``offset`` (or ``positions``) of the new tokens.

    Angles are computed in float64 and cast to the input's dtype, so long positions keep
    their precision. No parameters; nothing is cached between calls.

    Args:
        dim: features rotated per head (even, >= 2).
        base: frequency base (10000 in the original paper).
    """

    def __init__(self, dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"RotaryEmbedding: dim must be even and >= 2, got {dim}")
        if base <= 1.0:
            raise ValueError(f"RotaryEmbedding: base must be > 1, got {base}")
        self.dim = dim
        self.base = base

    def angles(self, positions: Int[Tensor, " seq"]) -> Float[Tensor, "seq half"]:
        """The rotation angles ``(seq, dim / 2)`` in float64."""
        exponent = torch.arange(0, self.dim, 2, dtype=torch.float64, device=positions.device)
        inv_freq = self.base ** (-exponent / self.dim)
        return positions.to(torch.float64)[:, None] * inv_freq[None, :]

    def forward(
        self,
        x: Float[Tensor, "*batch seq dim_head"],
        *,
        offset: int = 0,
        positions: Int[Tensor, " seq"] | None = None,
    ) -> Float[Tensor, "*batch seq dim_head"]:
        """Rotates ``x`` at ``positions`` (default ``offset, offset + 1, ...``) along ``seq``.

        ``x`` is ``(..., seq, dim_head)`` with ``dim_head == dim``, e.g.
        ``(batch, heads, seq, dim_head)``.
        """
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"RotaryEmbedding: expected (..., seq, {self.dim}), got {tuple(x.shape)}"
            )
        seq = x.shape[-2]
        if positions is None:
            if offset < 0:
                raise ValueError(f"RotaryEmbedding: offset must be >= 0, got {offset}")
            positions = torch.arange(offset, offset + seq, device=x.device)
        elif offset != 0:
            raise ValueError("RotaryEmbedding: give offset or positions, not both")
        elif positions.shape != (seq,):
            raise ValueError(
                f"RotaryEmbedding: positions must have shape ({seq},), got {tuple(positions.shape)}"
            )
        theta = self.angles(positions.to(x.device))
        cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def extra_repr(self) -> str:
        return f"{self.dim}, base={self.base}"
