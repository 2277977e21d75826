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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["ElasticNet", "KLRetention", "L2Decay", "LqNormalization", "RETENTIONS", "Retention"]


def _finite_positive(cls: str, name: str, value: object, minimum: float = 0.0, strict: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}: {name} must be a number, got {type(value).__name__}")
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{cls}: {name} must be finite and {relation} {minimum}, got {value}")


class Retention:
    """Base class: a readout ``phi(A)`` applied to the accumulated fast weights.

    Attributes:
        linear: ``True`` when the readout is the identity (the fast paths apply).
    """

    linear: ClassVar[bool] = False

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

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class L2Decay(Retention):
    """The paper's forgetting (eq. 14): the identity readout, so ``W = A`` decays linearly.

    Where the decay pulls (``W_0`` or zero) is the layer's ``forget_target``.
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


@dataclass(frozen=True)
class LqNormalization(Retention):
    """Moneta's l_q retention: ``W = A / (||A||_q^q + eps)^((q - 2) / q)`` per matrix.

    ``||A||_q`` is the entry-wise norm over the whole matrix (per batch and head); ``eps`` keeps
    the map finite at ``A = 0``. ``q = 2`` is the identity.

    Args:
        q: the norm's exponent, ``>= 2``.
        eps: added to ``||A||_q^q`` (> 0).

    Raises:
        ValueError: when ``q < 2`` or ``eps <= 0`` (or either is not finite).
        TypeError: when either is not a number.
    """

    q: float = 4.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _finite_positive("LqNormalization", "q", self.q, 2.0, strict=False)
        _finite_positive("LqNormalization", "eps", self.eps)

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        dims = tuple(range(-ndim, 0))
        total = a.abs().pow(self.q).sum(dim=dims, keepdim=True) + self.eps
        return a / total.pow((self.q - 2) / self.q)


@dataclass(frozen=True)
class KLRetention(Retention):
    """Memora's KL retention: ``W = c * softmax(A)`` over each row, ``A`` playing ``log W``.

    MIRAS' update ``W_t = c Softmax((1 - alpha_t) log W_{t-1} - theta_t g_t)`` is the linear
    decay of ``A = log W`` (softmax ignores the per-row constant of ``log``) read out through
    the softmax. Rows are the last dimension (a matrix's input side).

    Args:
        scale: ``c``; ``None`` (default): the square root of the row length, so that a uniform
            row has unit l2 norm.

    Raises:
        ValueError: when ``scale`` is not finite and > 0.
        TypeError: when ``scale`` is not a number or ``None``.
    """

    scale: float | None = None

    def __post_init__(self) -> None:
        if self.scale is not None:
            _finite_positive("KLRetention", "scale", self.scale)

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        c = math.sqrt(a.shape[-1]) if self.scale is None else self.scale
        return c * torch.softmax(a, dim=-1)


@dataclass(frozen=True)
class ElasticNet(Retention):
    """Elastic-net retention: l2 decay (``alpha``) of ``A`` and the soft threshold
    ``W = sign(A) max(|A| - lambda, 0)`` (the l1 part, in its lazy / dual-averaging form).

    Args:
        threshold: ``lambda >= 0``; 0 is the identity.

    Raises:
        ValueError: when ``threshold`` is negative or not finite.
        TypeError: when it is not a number.
    """

    threshold: float = 1e-3

    def __post_init__(self) -> None:
        _finite_positive("ElasticNet", "threshold", self.threshold, 0.0, strict=False)

    def _matrix(self, a: Tensor, ndim: int) -> Tensor:
        return torch.sign(a) * torch.clamp(a.abs() - self.threshold, min=0)


#: Retention classes by name, for configs and the command line.
RETENTIONS: dict[str, type[Retention]] = {
    "l2": L2Decay,
    "lq": LqNormalization,
    "kl": KLRetention,
    "elastic_net": ElasticNet,
}
