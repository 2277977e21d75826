"""How a block merges its attention output ``y`` with its memory output ``m``.

- MAC (paper eq. 25): ``o = y (x) M*(y)``; :class:`ProductGate` takes ``(x)`` literally.
- MAG (eq. 28): ``o = y (x) M(x~)`` where ``(x)`` is "normalise both with learnable
  vector-valued weights, then a non-linearity"; :class:`NormalizedGate`. Also MAC's default:
  with the plain product MAC learned recall slowly or not at all (docs/guides/mac_ablation.md).
- :class:`SigmoidGate`: ``y * sigmoid(m)``, a parameter-free middle ground.

Every gate has the constructor ``(dim, *, eps)`` and ``forward(y, m) -> o`` on
``(batch, seq, dim)``, so a config swaps one for another by name (``TitansConfig.combine``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.layers.norm import RMSNorm

__all__ = ["CombineGate", "NormalizedGate", "ProductGate", "SigmoidGate"]


class CombineGate(nn.Module):
    """Base class: ``forward(y, m) -> o``, all ``(batch, seq, dim)``.

    Args:
        dim: the feature width (>= 1).
        eps: the epsilon of any normalisation the gate has (unused by gates without one).

    Raises:
        ValueError: when ``dim < 1``.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be >= 1, got {dim}")
        self.dim = dim

    def forward(
        self, y: Float[Tensor, "batch seq dim"], m: Float[Tensor, "batch seq dim"]
    ) -> Float[Tensor, "batch seq dim"]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.dim}"


class ProductGate(CombineGate):
    """``o = y * m`` (MAC, eq. 25). No parameters.

    Args:
        dim: the feature width (>= 1).
        eps: unused (the constructor takes it so that every combine gate is built alike).
    """

    def forward(
        self, y: Float[Tensor, "batch seq dim"], m: Float[Tensor, "batch seq dim"]
    ) -> Float[Tensor, "batch seq dim"]:
        return y * m


class SigmoidGate(CombineGate):
    """``o = y * sigmoid(m)``. No parameters.

    Args:
        dim: the feature width (>= 1).
        eps: unused (the constructor takes it so that every combine gate is built alike).
    """

    def forward(
        self, y: Float[Tensor, "batch seq dim"], m: Float[Tensor, "batch seq dim"]
    ) -> Float[Tensor, "batch seq dim"]:
        return y * torch.sigmoid(m)


class NormalizedGate(CombineGate):
    """``o = RMSNorm_y(y) * sigmoid(RMSNorm_m(m))`` with learned gains (MAG, eq. 28).

    The two RMSNorm gains are the paper's "learnable vector-valued weights"; the sigmoid is
    its non-linearity.

    Args:
        dim: the feature width (>= 1).
        eps: the epsilon of both RMSNorms.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps)
        self.norm_y = RMSNorm(dim, eps=eps)
        self.norm_m = RMSNorm(dim, eps=eps)

    def forward(
        self, y: Float[Tensor, "batch seq dim"], m: Float[Tensor, "batch seq dim"]
    ) -> Float[Tensor, "batch seq dim"]:
        return self.norm_y(y) * torch.sigmoid(self.norm_m(m))
