"""Retention: how the memory keeps (and forgets) what it has written (MIRAS' retention gates).

Every retention here has two parts (docs/components/retention.md):

- a *linear decay* of an accumulator ``A``: ``A_t = T + (1 - alpha_t) (A_{t-1} - T) + step_t``,
  with the forget gate ``alpha`` and the target ``T`` of the layer's ``forget_target`` (``W_0``
  by default, zero for eq. 14 as written); this part is the paper's eq. 14 and stays
  chunk-parallel;
- a *readout* ``W = phi(A)``: the fast weights the memory reads and differentiates at. The
  gradient of the inner loss is taken with respect to ``W`` (not ``A``), as in mirror descent /
  follow-the-regularised-leader, which is how MIRAS derives Moneta and Memora.

| class | readout ``phi`` on a matrix fast weight | MIRAS |
|---|---|---|
| :class:`L2Decay` | identity (the paper's forgetting) | Titans, Yaad |
| :class:`LqNormalization` | ``A / ||A||_q^(q - 2)`` (entry-wise norm of the matrix) | Moneta |
| :class:`KLRetention` | ``c * softmax(A)`` over each row (``A`` plays ``log W``) | Memora |
| :class:`ElasticNet` | ``sign(A) max(|A| - lambda, 0)`` (soft threshold) | elastic net |

The readouts act on matrix fast weights only (two or more parameter dimensions); vectors
(LayerNorm gains, biases) keep the identity. With the identity readout the memory runs on the
fast paths of :func:`~memory_blocks.memorize`; any other goes through its general path.

*Where the readout is applied* is the retention's ``per_chunk`` flag:

- ``per_chunk=False`` (the recurrence as written): token ``t`` reads ``W_t = phi(A_t)``;
- ``per_chunk=True`` (MIRAS' chunk-wise training, which keeps the update linear inside a chunk
  and applies the nonlinearity at chunk boundaries): inside a chunk token ``t`` reads the
  readout's first-order expansion at the chunk's start ``A_0``,
  ``W_t = phi(A_0) + J_phi(A_0)[A_t - A_0]``, and the chunk's last token reads ``phi(A_t)``
  exactly. At chunk size 1 both are the same rule. The expansion is linear in the chunk's
  factored gradients, so a built-in memory keeps its dual form (:meth:`Retention.expand`):
  no per-token weights are built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from torch.func import jvp

from memory_blocks.functional.readout_expansion import (
    Expansion,
    LqExpansion,
    MaskExpansion,
    MaterialisedExpansion,
    SoftmaxExpansion,
)
from memory_blocks.functional.token_powers import abs_power

__all__ = ["ElasticNet", "KLRetention", "L2Decay", "LqNormalization", "RETENTIONS", "Retention"]


def _finite_positive(cls: str, name: str, value: object, minimum: float = 0.0, strict: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}: {name} must be a number, got {type(value).__name__}")
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{cls}: {name} must be finite and {relation} {minimum}, got {value}")


@dataclass(frozen=True)
class Retention:
    """Base class: a readout ``phi(A)`` applied to the accumulated fast weights.

    Args:
        per_chunk: keyword only. ``False`` (default): every token reads ``phi(A_t)``. ``True``:
            inside a chunk the readout is expanded to first order at the chunk's start,
            ``phi(A_0) + J_phi(A_0)[A_t - A_0]``, and exact at the chunk's last token (MIRAS'
            chunk-wise form; fast for built-in memories). Equal at chunk size 1.

    Attributes:
        linear: ``True`` when the readout is the identity (the fast paths apply).
        scales_only: ``True`` when the readout only rescales each matrix (``phi(A) = A / s(A)``,
            ``s`` a scalar per matrix, as ``l_q``): a token's read of its own ``phi(A_t)`` is its
            dual-form read of ``A_t`` over ``s(A_t)``, so a built-in memory keeps the dual form
            with the per-token rule too (the expansion's ``read_tokens``, which such a retention's
            ``expand`` must provide).

    Raises:
        TypeError: when ``per_chunk`` is not a bool.
    """

    linear: ClassVar[bool] = False
    scales_only: ClassVar[bool] = False
    per_chunk: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.per_chunk, bool):
            raise TypeError(f"{type(self).__name__}: per_chunk must be True or False, got {self.per_chunk!r}")

    def readout(self, a: Float[Tensor, "..."], ndim: int) -> Float[Tensor, "..."]:
        """``phi(A)`` for one fast weight whose own shape is the last ``ndim`` dimensions.

        Args:
            a: the accumulator, ``(*lead, *shape)`` with ``len(shape) == ndim``.
            ndim: how many trailing dimensions are the parameter's own.

        Returns:
            The fast weights ``W``, the same shape as ``a``.
        """
        if ndim < 2:
            return a
        return self._matrix(a, ndim)

    def tangent(self, a: Float[Tensor, "..."], m: Float[Tensor, "..."], ndim: int) -> Float[Tensor, "..."]:
        """``J_phi(A)[M]``, the readout's derivative at ``A`` in the direction ``M``.

        The base class takes it with forward-mode autograd (any readout); the built-in
        retentions write it out.

        Args:
            a: the accumulator, ``(*lead, *shape)``.
            m: the direction, broadcastable to ``a``'s shape.
            ndim: how many trailing dimensions are the parameter's own.

        Returns:
            The derivative, ``a``'s shape (broadcast with ``m``).
        """
        a, m = torch.broadcast_tensors(a, m)
        return jvp(lambda x: self.readout(x, ndim), (a.contiguous(),), (m.contiguous(),))[1]

    def expand(self, a: Float[Tensor, "*lead dim_out dim_in"]) -> Expansion:
        """The readout expanded at the matrix accumulator ``a``, read in the dual form
        (:mod:`memory_blocks.functional.readout_expansion`): the per-chunk readout of a built-in
        memory. The base class materialises ``J`` per gradient (slow, any readout); the built-in
        retentions contract it.

        Args:
            a: the accumulator at a chunk's start, ``(*lead, dim_out, dim_in)``.

        Returns:
            An object with ``read_point(h)`` (``phi(a) h``) and ``read(h, dense, delta, x, mix)``.
        """
        return MaterialisedExpansion(a, lambda z: self.readout(z, 2), lambda z, m: self.tangent(z, m, 2))

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class L2Decay(Retention):
    """The paper's forgetting (eq. 14): the identity readout, so ``W = A`` decays linearly.

    Where the decay pulls (``W_0`` or zero) is the layer's ``forget_target``.

    Args:
        per_chunk: accepted for a uniform interface; the identity's expansion is itself, so both
            rules are one.
    """

    linear: ClassVar[bool] = True

    def readout(self, a: Float[Tensor, "..."], ndim: int) -> Float[Tensor, "..."]:
        """The identity.

        Args:
            a: the accumulator.
            ndim: the parameter's own dimensions (unused).

        Returns:
            ``a`` itself.
        """
        return a

    def tangent(self, a: Float[Tensor, "..."], m: Float[Tensor, "..."], ndim: int) -> Float[Tensor, "..."]:
        """``M`` itself (the identity's derivative), broadcast to ``a``'s shape."""
        return m.expand(torch.broadcast_shapes(a.shape, m.shape))


@dataclass(frozen=True)
class LqNormalization(Retention):
    """Moneta's l_q retention: ``W = A / (||A||_q^q + eps)^((q - 2) / q)`` per matrix.

    ``||A||_q`` is the entry-wise norm over the whole matrix (per batch and head); ``eps`` keeps
    the map finite at ``A = 0``. ``q = 2`` is the identity.

    Args:
        q: the norm's exponent, ``>= 2``.
        eps: added to ``||A||_q^q`` (> 0).
        per_chunk: keyword only; see :class:`Retention` (the readout expanded inside each chunk).

    Raises:
        ValueError: when ``q < 2`` or ``eps <= 0`` (or either is not finite).
        TypeError: when either is not a number.
    """

    scales_only: ClassVar[bool] = True
    q: float = 4.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite_positive("LqNormalization", "q", self.q, 2.0, strict=False)
        _finite_positive("LqNormalization", "eps", self.eps)

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        return a / self._scale(a, ndim)[0]

    def _scale(self, a: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        """``s = (||A||_q^q + eps)^((q - 2) / q)`` per matrix and its gradient ``ds/dA``."""
        dims = tuple(range(-ndim, 0))
        total = abs_power(a, self.q).sum(dim=dims, keepdim=True) + self.eps
        grad = (self.q - 2) * total.pow(-2 / self.q) * a * abs_power(a, self.q - 2)
        return total.pow((self.q - 2) / self.q), grad

    def tangent(self, a: Float[Tensor, "..."], m: Float[Tensor, "..."], ndim: int) -> Float[Tensor, "..."]:
        """``J[M] = M / s - A <ds/dA, M> / s^2`` (see :meth:`Retention.tangent`)."""
        if ndim < 2:
            return super().tangent(a, m, ndim)
        s, grad = self._scale(a, ndim)
        inner = (grad * m).sum(dim=tuple(range(-ndim, 0)), keepdim=True)
        return m / s - a * (inner / s.square())

    def expand(self, a: Float[Tensor, "*lead dim_out dim_in"]) -> Expansion:
        """:class:`~memory_blocks.functional.readout_expansion.LqExpansion` (see :meth:`Retention.expand`)."""
        return LqExpansion(a, self.q, self.eps)


@dataclass(frozen=True)
class KLRetention(Retention):
    """Memora's KL retention: ``W = c * softmax(A)`` over each row, ``A`` playing ``log W``.

    MIRAS' update ``W_t = c Softmax((1 - alpha_t) log W_{t-1} - theta_t g_t)`` is the linear
    decay of ``A = log W`` (softmax ignores the per-row constant of ``log``) read out through
    the softmax. Rows are the last dimension (a matrix's input side).

    Args:
        scale: ``c``; ``None`` (default): the square root of the row length, so that a uniform
            row has unit l2 norm.
        per_chunk: keyword only; see :class:`Retention` (the readout expanded inside each chunk).

    Raises:
        ValueError: when ``scale`` is not finite and > 0.
        TypeError: when ``scale`` is not a number or ``None``.
    """

    scale: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale is not None:
            _finite_positive("KLRetention", "scale", self.scale)

    def _c(self, a: Tensor) -> float:
        return math.sqrt(a.shape[-1]) if self.scale is None else self.scale

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        return self._c(a) * torch.softmax(a, dim=-1)

    def tangent(self, a: Float[Tensor, "..."], m: Float[Tensor, "..."], ndim: int) -> Float[Tensor, "..."]:
        """``J[M] = c (P * M - P * rowsum(P * M))``, ``P = softmax(A)`` per row (see
        :meth:`Retention.tangent`)."""
        if ndim < 2:
            return super().tangent(a, m, ndim)
        p = torch.softmax(a, dim=-1)
        pm = p * m
        return self._c(a) * (pm - p * pm.sum(-1, keepdim=True))

    def expand(self, a: Float[Tensor, "*lead dim_out dim_in"]) -> Expansion:
        """:class:`~memory_blocks.functional.readout_expansion.SoftmaxExpansion` (see :meth:`Retention.expand`)."""
        return SoftmaxExpansion(a, self._c(a))


@dataclass(frozen=True)
class ElasticNet(Retention):
    """Elastic-net retention: l2 decay (``alpha``) of ``A`` and the soft threshold
    ``W = sign(A) max(|A| - lambda, 0)`` (the l1 part, in its lazy / dual-averaging form).

    Args:
        threshold: ``lambda >= 0``; 0 is the identity.
        per_chunk: keyword only; see :class:`Retention` (the readout expanded inside each chunk).

    Raises:
        ValueError: when ``threshold`` is negative or not finite.
        TypeError: when it is not a number.
    """

    threshold: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite_positive("ElasticNet", "threshold", self.threshold, 0.0, strict=False)

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        return torch.sign(a) * torch.clamp(a.abs() - self.threshold, min=0)

    def _mask(self, a: Tensor) -> Tensor:
        return (a.abs() > self.threshold).to(a.dtype)

    def tangent(self, a: Float[Tensor, "..."], m: Float[Tensor, "..."], ndim: int) -> Float[Tensor, "..."]:
        """``J[M] = [|A| > lambda] * M`` (see :meth:`Retention.tangent`)."""
        if ndim < 2:
            return super().tangent(a, m, ndim)
        return self._mask(a) * m

    def expand(self, a: Float[Tensor, "*lead dim_out dim_in"]) -> Expansion:
        """:class:`~memory_blocks.functional.readout_expansion.MaskExpansion` (see :meth:`Retention.expand`)."""
        return MaskExpansion(self._matrix(a, 2), self._mask(a))


#: Retention classes by name, for configs and the command line.
RETENTIONS: dict[str, type[Retention]] = {
    "l2": L2Decay,
    "lq": LqNormalization,
    "kl": KLRetention,
    "elastic_net": ElasticNet,
}
