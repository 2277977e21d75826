"""Persistent memory: learned, input-independent tokens prepended to a sequence (eq. 19)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["PersistentMemory"]


class PersistentMemory(nn.Module):
    """``x_new = [p_1, ..., p_{N_p} | x]`` (paper eq. 19).

    The ``N_p`` tokens are parameters (task knowledge, independent of the input), shared by
    every sequence of a batch and trained by the outer loop. ``num_tokens = 0`` is allowed and
    makes ``forward`` the identity.

    Args:
        num_tokens: ``N_p`` (>= 0).
        dim: token features.
        init_std: standard deviation of the normal initialisation.
    """

    def __init__(self, num_tokens: int, dim: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        if num_tokens < 0:
            raise ValueError(f"PersistentMemory: num_tokens must be >= 0, got {num_tokens}")
        if dim < 1:
            raise ValueError(f"PersistentMemory: dim must be >= 1, got {dim}")
        if init_std < 0:
            raise ValueError(f"PersistentMemory: init_std must be >= 0, got {init_std}")
        self.num_tokens = num_tokens
        self.dim = dim
        self.memory = nn.Parameter(torch.randn(num_tokens, dim) * init_std)

    def tokens(self, batch: int) -> Float[Tensor, "batch prefix dim"]:
        """The persistent tokens, expanded (not copied) to ``(batch, num_tokens, dim)``."""
        if batch < 1:
            raise ValueError(f"PersistentMemory: batch must be >= 1, got {batch}")
        return self.memory[None].expand(batch, self.num_tokens, self.dim)

    def forward(self, x: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch prefix_seq dim"]:
        """Returns ``(batch, num_tokens + seq, dim)``: the tokens, then ``x``."""
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"PersistentMemory: expected (batch, seq, {self.dim}), got {tuple(x.shape)}"
            )
        if x.dtype != self.memory.dtype or x.device != self.memory.device:
            raise ValueError(
                f"PersistentMemory: input is {x.dtype} on {x.device}, tokens are "
                f"{self.memory.dtype} on {self.memory.device}"
            )
        if self.num_tokens == 0:
            return x
        return torch.cat([self.tokens(x.shape[0]), x], dim=1)

    def extra_repr(self) -> str:
        return f"{self.num_tokens}, {self.dim}"
