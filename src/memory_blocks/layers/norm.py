"""RMSNorm (Llama style): scale-only normalisation of the last dimension."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dimension.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square for stability.
        affine: learn a per-feature gain ``weight`` (initialised to ones).
    """

    def __init__(self, dim: int, *, eps: int | float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"RMSNorm: dim must be >= 1, got {dim}")
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm: expected last dimension {self.dim}, got {x.shape[-1]}")
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight if self.weight is not None else y

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"
