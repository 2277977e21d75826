"""A retention's readout expanded at one accumulator, read in the dual form.

For a matrix accumulator ``A`` (the chunk's start) and the readout ``phi`` of a retention, an
expansion reads rows ``h_t`` through

    phi(A) h_t + sum_k c_k[t] J[M_k] h_t + sum_j mix[t, j] J[delta_j x_j^T] h_t

(``J = J_phi(A)``): the per-chunk readout of :mod:`memory_blocks.retention`, where the ``M_k``
are a few full directions (the start weights, the momentum) and the ``delta_j x_j^T`` a chunk's
factored gradients. Each class computes what it needs of ``A`` once (the norm and its gradient,
the row softmax, the threshold mask) and never builds a matrix per row.

Shapes: ``A`` is ``(*lead, dim_out, dim_in)``; rows ``h`` are ``(*lead, rows, dim_in)``; the
coefficients ``c_k`` are ``(*lead, rows, 1)`` (or ``None`` for 1); ``delta`` and ``x`` are
``(*lead, src, dim_out)`` and ``(*lead, src, dim_in)``; ``mix`` is ``(*lead, rows, src)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from memory_blocks.functional.token_powers import Dense, abs_power, token_powers

__all__ = ["Expansion", "LqExpansion", "MaskExpansion", "MaterialisedExpansion", "SoftmaxExpansion"]


def _scaled(c: Tensor | None, t: Tensor) -> Tensor:
    return t if c is None else c * t


def _rows(h: Tensor, mat: Tensor) -> Tensor:
    """``h mat^T`` (rows through a full matrix), taken as ``(mat h^T)^T`` so that autograd
    returns ``mat``'s gradient in ``mat``'s own layout: a transposed gradient would make every
    full-size elementwise operation behind it (softmax backward, sums of gradients) walk memory
    across rows, many times slower on a CPU."""
    if h.shape[-2] == 1:
        # One row (a chunk's last token): a product and a sum. As a matrix product its
        # backward reads the transposed matrix against a vector, several times slower.
        return (mat * h).sum(-1).unsqueeze(-2)
    return (mat @ h.mT).mT


def _dual(delta: Tensor, x: Tensor, mix: Tensor, h: Tensor) -> Tensor:
    """``sum_j mix[t, j] (x_j . h_t) delta_j``."""
    return ((h @ x.mT) * mix) @ delta


def _change(h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor) -> Tensor:
    """``(A_t - A) h_t`` per row: the full directions and the factored gradients, read as they
    are (``sum_k c_k[t] M_k h_t + sum_j mix[t, j] (x_j . h_t) delta_j``)."""
    y = _dual(delta, x, mix, h)
    for c, m in dense:
        y = y + _scaled(c, _rows(h, m))
    return y


def _pairs(mat: Tensor, delta: Tensor, x: Tensor, mix: Tensor, h: Tensor, causal: bool = False) -> Tensor:
    """``sum_j mix[t, j] delta_j * (mat (x_j * h_t))``: reads of ``mat * (delta_j x_j^T)`` (an
    entry-wise product with a fixed matrix), one product over the (row, source) pairs: all of
    them, or with ``causal`` (``mix`` lower triangular) only the pairs ``j <= t``, about half."""
    if not causal:
        pairs = h.unsqueeze(-2) * x.unsqueeze(-3)  # (*lead, rows, src, in)
        z = _rows(pairs.flatten(-3, -2), mat).unflatten(-2, pairs.shape[-3:-1])  # (*lead, rows, src, out)
        return ((mix.unsqueeze(-1) * delta.unsqueeze(-3)) * z).sum(-2)
    n = h.shape[-2]
    t, j = torch.tril_indices(n, n, device=h.device)  # pair p is (t[p], j[p]), j <= t
    # The pairs' rows and sources are picked by one-hot (pairs, n) products rather than by
    # indexing: their gradients are products too (an indexing's backward, an accumulating
    # scatter, was slower than the pairs' own product here).
    tokens = torch.arange(n, device=h.device)
    at_t = (t.unsqueeze(-1) == tokens).to(h.dtype)
    at_j = (j.unsqueeze(-1) == tokens).to(h.dtype)
    z = _rows((at_t @ h) * (at_j @ x), mat)  # (*lead, pairs, out)
    # Row t sums its own pairs, each weighted by mix[t, j]: a (rows, pairs) matrix.
    return (at_t.mT * mix[..., t, j].unsqueeze(-2)) @ ((at_j @ delta) * z)


class Expansion:
    """Base class: ``read_point(h)`` and ``read(h, dense, delta, x, mix)`` (module docstring).

    A subclass implements ``_read`` (and ``_point``, unless ``phi(A)`` is held materialised as
    ``self.weight``); the shapes are checked here, once for every expansion."""

    weight: Tensor

    def read_point(self, h: Float[Tensor, "*lead rows dim_in"]) -> Float[Tensor, "*lead rows dim_out"]:
        """``phi(A) h``."""
        return self._point(h)

    def read(
        self,
        h: Float[Tensor, "*lead rows dim_in"],
        dense: Dense,
        delta: Float[Tensor, "*lead src dim_out"],
        x: Float[Tensor, "*lead src dim_in"],
        mix: Float[Tensor, "*lead rows src"],
        *,
        causal: bool = False,
    ) -> Float[Tensor, "*lead rows dim_out"]:
        """The expansion's read of every row (module docstring).

        ``causal``: the rows and the sources are the same tokens and ``mix`` is lower triangular
        (``mix[t, j] = 0`` for ``j > t``, as a chunk's mixing matrix is): the terms of the
        pairs above the diagonal, zero, are not computed (about half of the pairwise work of
        the KL and elastic-net readouts).

        Raises:
            ValueError: ``causal`` with a different number of rows and sources.
        """
        if causal and h.shape[-2] != x.shape[-2]:
            raise ValueError(
                f"Expansion.read: causal needs as many rows as sources, got {h.shape[-2]} and {x.shape[-2]}"
            )
        return self._read(h, dense, delta, x, mix, causal)

    def read_tokens(
        self,
        h: Float[Tensor, "*lead rows dim_in"],
        dense: Dense,
        delta: Float[Tensor, "*lead rows dim_out"],
        x: Float[Tensor, "*lead rows dim_in"],
        mix: Float[Tensor, "*lead rows rows"],
    ) -> Float[Tensor, "*lead rows dim_out"]:
        """Row ``t`` read through its own ``phi(A_t)``, ``A_t = A + sum_k c_k[t] M_k + sum_j
        mix[t, j] delta_j x_j^T`` (the per-token readout), for a readout that only rescales
        (``Retention.scales_only``); the sources are the rows' own tokens.

        Raises:
            NotImplementedError: for a readout that does more than rescale each matrix.
        """
        return self._read_tokens(h, dense, delta, x, mix)

    def _point(self, h: Tensor) -> Tensor:
        return _rows(h, self.weight)

    def _read(self, h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor, causal: bool) -> Tensor:
        raise NotImplementedError

    def _read_tokens(self, h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}: only a rescaling readout reads each token's own weights")


class MaterialisedExpansion(Expansion):
    """Any readout, through its materialised value and derivative (slow; the reference).

    Args:
        a: the accumulator.
        readout: ``A -> phi(A)``.
        tangent: ``(A, M) -> J_phi(A)[M]`` (``M`` broadcasts against ``A``).
    """

    def __init__(self, a: Tensor, readout: Callable[[Tensor], Tensor], tangent: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.a, self._tangent = a, tangent
        self.weight = readout(a)

    def _read(self, h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor, causal: bool) -> Tensor:
        y = self._point(h)
        for c, m in dense:
            y = y + _scaled(c, _rows(h, self._tangent(self.a, m)))
        outer = delta.unsqueeze(-1) * x.unsqueeze(-2)  # (*lead, src, out, in)
        jac = self._tangent(self.a.unsqueeze(-3), outer)
        return y + torch.einsum("...tj,...joi,...ti->...to", mix, jac, h)


class LqExpansion(Expansion):
    """``phi(A) = A / s``, ``s = (||A||_q^q + eps)^((q - 2) / q)``: ``J[M] = M / s - A <g, M> / s^2``
    with ``g = ds/dA``; a read is the dual form over ``1 / s`` and one scalar per direction."""

    def __init__(self, a: Tensor, q: float, eps: float) -> None:
        self.a, self.q, self.eps = a, q, eps
        # |A|^(q - 2), shared by the norm and its gradient (a square at MIRAS' q = 4)
        self._power = abs_power(a, q - 2)
        total = (self._power * a.square()).sum(dim=(-2, -1), keepdim=True) + eps
        self._total = total
        self.s = total.pow((q - 2) / q)
        self._g: Tensor | None = None

    @property
    def g(self) -> Tensor:
        """``ds/dA = (q - 2) (||A||_q^q + eps)^(-2 / q) A |A|^(q - 2)`` (built on first use)."""
        if self._g is None:
            self._g = ((self.q - 2) * self._total.pow(-2 / self.q)) * (self.a * self._power)
        return self._g

    def _point(self, h: Tensor) -> Tensor:
        return _rows(h, self.a) / self.s

    def _read_tokens(self, h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor) -> Tensor:
        """``A_t h_t / s(A_t)`` per row: the read of ``A_t`` in the dual form, over the scale of
        the row's own accumulator, whose power sum :func:`token_powers` takes one row at a time
        (no matrix per row is kept)."""
        linear = _rows(h, self.a) + _change(h, dense, delta, x, mix)
        total = token_powers(self.a, dense, delta, x, mix, self.q) + self.eps  # (*lead, rows)
        return linear / total.pow((self.q - 2) / self.q).unsqueeze(-1)

    def _read(self, h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor, causal: bool) -> Tensor:
        ha = _rows(h, self.a)
        linear = _change(h, dense, delta, x, mix)
        inner = mix @ ((delta @ self.g) * x).sum(-1, keepdim=True)  # (*lead, rows, 1)
        for c, m in dense:
            # <g, M> as a product and a sum: its backward is two broadcast products (an einsum's
            # is a batched matrix product with an inner size of 1, far slower on a CPU)
            inner = inner + _scaled(c, (self.g * m).sum(dim=(-2, -1), keepdim=True))
        return (ha + linear) / self.s - ha * (inner / self.s.square())


class SoftmaxExpansion(Expansion):
    """``phi(A) = c softmax(A)`` per row (``P``): ``J[M] = c (P * M - P * rowsum(P * M))``."""

    def __init__(self, a: Tensor, scale: float) -> None:
        self.p, self.c = torch.softmax(a, dim=-1), scale

    def _point(self, h: Tensor) -> Tensor:
        return self.c * _rows(h, self.p)

    def _read(self, h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor, causal: bool) -> Tensor:
        hp = _rows(h, self.p)
        y = hp - hp * (mix @ (delta * _rows(x, self.p))) + _pairs(self.p, delta, x, mix, h, causal)
        for c, m in dense:
            pm = self.p * m
            y = y + _scaled(c, _rows(h, pm) - hp * pm.sum(-1).unsqueeze(-2))
        return self.c * y


class MaskExpansion(Expansion):
    """``phi`` with an entry-wise derivative ``J[M] = mask * M`` (the soft threshold's)."""

    def __init__(self, weight: Tensor, mask: Tensor) -> None:
        self.weight, self.mask = weight, mask

    def _read(self, h: Tensor, dense: Dense, delta: Tensor, x: Tensor, mix: Tensor, causal: bool) -> Tensor:
        y = self._point(h) + _pairs(self.mask, delta, x, mix, h, causal)
        for c, m in dense:
            y = y + _scaled(c, _rows(h, self.mask * m))
        return y
