"""Muon's orthogonalisation: the quintic Newton-Schulz iteration (ATLAS; Muon's coefficients)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["NEWTON_SCHULZ_COEFFICIENTS", "newton_schulz", "orthogonal_step"]

#: ``(a, b, c)`` of ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Added under square roots and to divisors so that a zero matrix (a fresh momentum) gives a
# zero step with finite gradients.
_EPS = 1e-12


def _frobenius(x: Tensor) -> Tensor:
    return (x.square().sum(dim=(-2, -1), keepdim=True) + _EPS * _EPS).sqrt()


def newton_schulz(x: Float[Tensor, "*batch rows cols"], steps: int = 5) -> Float[Tensor, "*batch rows cols"]:
    """An approximate ``U V^T`` of ``x = U S V^T``: every singular value moved near 1.

    ``x`` is first divided by its Frobenius norm, then ``steps`` times
    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (taken on the smaller side). The quintic
    coefficients leave the singular values in about ``[0.7, 1.2]`` rather than exactly at 1.
    The iteration runs on the small side (``X_k = M_k X_0``, see the code): the same result up
    to rounding for about half the arithmetic of iterating on the full matrix at 256 x 1024.

    Args:
        x: ``(*batch, rows, cols)`` matrices.
        steps: iterations (>= 1).

    Returns:
        ``(*batch, rows, cols)`` with the singular vectors of ``x``.

    Raises:
        ValueError: when ``steps`` is not an integer >= 1 or ``x`` has fewer than 2 dimensions.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"newton_schulz: steps must be an integer >= 1, got {steps!r}")
    if x.ndim < 2:
        raise ValueError(f"newton_schulz: x must be a matrix (or a batch of them), got shape {tuple(x.shape)}")
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    wide = x.shape[-2] <= x.shape[-1]
    y = x / _frobenius(x)
    # Every iterate is a polynomial of the Gram matrix times the start: X_k = M_k X_0 (wide;
    # X_0 M_k when tall), with X_k X_k^T = M_k G M_k^T for G = X_0 X_0^T. So the iteration runs
    # on the small side only: per step two small products for the Gram matrix, one for its
    # square and one to update M, instead of two products with the full matrix; the full matrix
    # is read twice in all (G and the final M X_0). Tall matrices multiply from the right, so
    # no transposed view of x (whose gradients would come back strided) is taken.
    gram0 = y @ y.mT if wide else y.mT @ y
    # The first step from M_0 = I: M_1 = a I + b G + c G^2.
    m = b * gram0 + c * (gram0 @ gram0) + a * torch.eye(gram0.shape[-1], dtype=gram0.dtype, device=gram0.device)
    for _ in range(steps - 1):
        gram = m @ gram0 @ m.mT if wide else m.mT @ gram0 @ m
        poly = b * gram + c * (gram @ gram)
        m = a * m + (poly @ m if wide else m @ poly)
    return m @ y if wide else y @ m


def orthogonal_step(s: Float[Tensor, "..."], ndim: int, steps: int) -> Float[Tensor, "..."]:
    """``||S||_F NS(S) / ||NS(S)||_F`` per fast weight: Muon's step, at the momentum's size.

    Args:
        s: the momentum of one fast weight, ``(*lead, *shape)`` with ``len(shape) == ndim``.
            A parameter with more than two dimensions is read as ``(shape[0], prod(rest))``.
        ndim: the parameter's own dimensions; vectors (``ndim < 2``) are returned unchanged.
        steps: Newton-Schulz iterations.

    Returns:
        The step, the same shape as ``s``.
    """
    if ndim < 2:
        return s
    lead = s.shape[: s.ndim - ndim]
    m = s.reshape(*lead, s.shape[s.ndim - ndim], -1)
    o = newton_schulz(m, steps)
    o = o * (_frobenius(m) / _frobenius(o))
    return o.reshape(s.shape)
