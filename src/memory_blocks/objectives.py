"""Inner objectives (attentional biases): what the memory's gradient step minimises.

An objective maps ``pred, target`` of shape ``(*batch, dim_out)`` to a per-token loss
``(*batch)``. The default is the paper's ``||f(W; k) - v||_2^2`` (eq. 12); the others are
MIRAS' alternatives. Every objective works with every memory model: the per-token gradients
are taken by autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from jaxtyping import Float
from torch import Tensor

from memory_blocks.functional.losses import dot_product, huber, lp_error, squared_error

__all__ = ["DotProduct", "Huber", "LpError", "Objective", "SquaredError", "OBJECTIVES"]


class Objective:
    """Base class: ``objective(pred, target) -> per-token loss``."""

    def __call__(
        self, pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"]
    ) -> Float[Tensor, "*batch"]:
        raise NotImplementedError


@dataclass(frozen=True)
class SquaredError(Objective):
    """``||pred - target||_2^2`` summed over features, no 1/2 (paper eq. 12)."""

    #: The pure function this objective computes (lets ``memorize`` use its hand-written path).
    function: ClassVar[Callable[[Tensor, Tensor], Tensor]] = staticmethod(squared_error)

    def __call__(
        self, pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"]
    ) -> Float[Tensor, "*batch"]:
        return squared_error(pred, target)


@dataclass(frozen=True)
class Huber(Objective):
    """Huber loss summed over features: squared inside ``|r| <= delta``, linear outside.

    Attributes:
        delta: the threshold on ``|r| = |pred - target|`` (> 0).

    Raises:
        ValueError: when ``delta`` is not > 0.
    """

    delta: int | float = 1.0

    def __post_init__(self) -> None:
        if not self.delta > 0:
            raise ValueError(f"Huber: delta must be > 0, got {self.delta}")

    def __call__(
        self, pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"]
    ) -> Float[Tensor, "*batch"]:
        return huber(pred, target, self.delta)


@dataclass(frozen=True)
class LpError(Objective):
    """``||pred - target||_p^p`` summed over features (``p > 1`` keeps the gradient smooth).

    Attributes:
        p: the exponent of the norm (> 1).

    Raises:
        ValueError: when ``p`` is not > 1.
    """

    p: int | float = 3.0

    def __post_init__(self) -> None:
        if not self.p > 1:
            raise ValueError(f"LpError: p must be > 1, got {self.p}")

    def __call__(
        self, pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"]
    ) -> Float[Tensor, "*batch"]:
        return lp_error(pred, target, self.p)


@dataclass(frozen=True)
class DotProduct(Objective):
    """``-<pred, target>``: the Hebbian rule of linear attention."""

    def __call__(
        self, pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"]
    ) -> Float[Tensor, "*batch"]:
        return dot_product(pred, target)


#: Objective classes by name, for configs and the command line.
OBJECTIVES: dict[str, type[Objective]] = {
    "squared_error": SquaredError,
    "huber": Huber,
    "lp": LpError,
    "dot_product": DotProduct,
}
