"""Feature maps on keys and queries: ``phi(k)`` is written, ``phi(q)`` is read (ATLAS).

A feature map acts feature-wise and keeps the width, so it fits every memory model:

- :class:`IdentityFeatures` (the default): ``phi(x) = x``;
- :class:`PolynomialFeatures`: ``phi(x) = sum_{i=1..p} a_i x^i`` element-wise, with learned
  coefficients ``a_i`` (initialised at ``1 / i!``, the Taylor coefficients of ``exp(x) - 1``).

ATLAS' polynomial kernel maps to all monomials of degree ``<= p`` (``d^p`` features); that
would multiply the memory's input width by ``d^(p - 1)``, so this project offers the
element-wise polynomial instead (docs/paper_alignment.md). :class:`~memory_blocks.NeuralMemory`
applies the map after the l2 normalisation of ``q`` and ``k`` and normalises again, so that the
stabilising step scale still sees unit-norm keys.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["FEATURE_MAPS", "FeatureMap", "IdentityFeatures", "PolynomialFeatures"]


class FeatureMap(nn.Module):
    """Base class: ``forward(x) -> phi(x)``, the same shape."""

    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        raise NotImplementedError


class IdentityFeatures(FeatureMap):
    """``phi(x) = x``."""

    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        """Returns ``x``.

        Args:
            x: ``(*batch, dim)`` keys or queries.

        Returns:
            ``x`` unchanged.
        """
        return x


class PolynomialFeatures(FeatureMap):
    """``phi(x) = sum_{i=1..p} a_i x^i`` element-wise, learned ``a_i`` (init ``1 / i!``).

    Args:
        degree: ``p >= 1`` (1 with ``a_1 = 1`` is the identity).

    Raises:
        ValueError: when ``degree`` is not an integer >= 1.
    """

    def __init__(self, degree: int = 2) -> None:
        super().__init__()
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"PolynomialFeatures: degree must be an integer >= 1, got {degree!r}")
        self.degree = degree
        self.coefficients = nn.Parameter(
            torch.tensor([1.0 / math.factorial(i) for i in range(1, degree + 1)])
        )

    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        """The polynomial, evaluated by Horner's rule.

        Args:
            x: ``(*batch, dim)`` keys or queries.

        Returns:
            ``(*batch, dim)`` the features.
        """
        a = self.coefficients.to(x.dtype)
        out = a[-1] * x
        for i in range(self.degree - 2, -1, -1):
            out = (out + a[i]) * x
        return out

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


#: Feature maps by name, for configs and the command line.
FEATURE_MAPS: dict[str, type[FeatureMap]] = {"identity": IdentityFeatures, "polynomial": PolynomialFeatures}
