"""Step scales: how the learned gate ``theta`` becomes the step size of the surprise (eq. 13).

The paper's update (eqs. 13-14, chunked as eq. 16) uses ``theta_t`` as it comes from its gate.
Its stable range then depends on three things the gate cannot see (docs/guides/stability.md):
the chunk size ``C`` (a chunk sums ``C`` gradients taken at one point), the momentum (a
consistent gradient is added up to ``1 / (1 - eta)`` times) and the curvature ``lambda`` of the
inner loss (a step is stable while ``theta * lambda`` stays below about 2), which for a
LayerNorm memory is hundreds of times that of a linear one.

- :class:`LiteralStep`: ``theta`` as the paper writes it (eq. 13). The default gate range
  (``theta`` from 0.01, at most 0.1) diverges with an MLP memory at chunk 16.
- :class:`NormalizedStep` (the default of :class:`~memory_blocks.NeuralMemory`):
  ``theta'_t = theta_t * (1 - eta_t) / (C * lambda_0)``, each factor switchable. The chunk then
  takes the *mean* of its gradients, momentum becomes an average of past gradients, and
  ``theta`` is measured in units of the memory's curvature at ``W_0``
  (:meth:`~memory_blocks.MemoryModel.curvature`): for every chunk size and every
  ``0 <= eta < 1`` the chunked heavy-ball recurrence on a quadratic of curvature up to
  ``2 lambda_0`` is stable for ``theta < 1``, the default gate's ceiling.

A step scale maps gate values to gate values; ``memorize`` and ``memorize_naive`` receive the
scaled ``theta``, so the rule is exact in both by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from jaxtyping import Float
from torch import Tensor

__all__ = ["STEP_SCALES", "LiteralStep", "NormalizedStep", "StepScale"]

Theta = Float[Tensor, "batch heads seq"] | dict[str, Float[Tensor, "batch heads seq"]]


class StepScale:
    """Base class: ``scale(theta, eta, chunk_size=..., memory=...) -> theta'``.

    Attributes:
        lr_init, lr_max: the learned ``theta`` gate's start value and ceiling that suit this
            scale (used when a layer is not given its own).
    """

    lr_init: ClassVar[float]
    lr_max: ClassVar[float]

    def __call__(
        self,
        theta: Theta,
        eta: Float[Tensor, "batch heads seq"] | None,
        *,
        chunk_size: int,
        memory: Any,
    ) -> Theta:
        raise NotImplementedError


@dataclass(frozen=True)
class LiteralStep(StepScale):
    """``theta`` unchanged: the paper's eq. 13 as written."""

    lr_init: ClassVar[float] = 0.01
    lr_max: ClassVar[float] = 0.1

    def __call__(
        self,
        theta: Theta,
        eta: Float[Tensor, "batch heads seq"] | None,
        *,
        chunk_size: int,
        memory: Any,
    ) -> Theta:
        return theta


@dataclass(frozen=True)
class NormalizedStep(StepScale):
    """``theta'_t = theta_t * (1 - eta_t) / (C * lambda_0)`` (a documented deviation from eq. 13).

    Args:
        chunk_mean: divide by the chunk size ``C``: a chunk's update is the mean of its
            gradients, not their sum.
        damp_momentum: multiply by ``1 - eta_t``: the surprise is an average of past gradients
            (``S_t = eta_t S_{t-1} - (1 - eta_t) theta_t g_t``), so a consistent gradient moves the
            weights as far at every ``eta``. No effect without momentum.
        curvature: divide by the memory model's curvature estimate ``lambda_0``
            (:meth:`~memory_blocks.MemoryModel.curvature`): ``theta = 1`` is about the largest
            stable step for every memory model.
    """

    chunk_mean: bool = True
    damp_momentum: bool = True
    curvature: bool = True

    lr_init: ClassVar[float] = 0.3
    lr_max: ClassVar[float] = 1.0

    def __call__(
        self,
        theta: Theta,
        eta: Float[Tensor, "batch heads seq"] | None,
        *,
        chunk_size: int,
        memory: Any,
    ) -> Theta:
        factor = 1.0
        if self.chunk_mean:
            factor /= chunk_size
        if self.curvature:
            factor /= memory.curvature()
        damp = None if (eta is None or not self.damp_momentum) else 1 - eta

        def one(t: Tensor) -> Tensor:
            t = t * factor
            return t if damp is None else t * damp

        if isinstance(theta, dict):
            return {name: one(t) for name, t in theta.items()}
        return one(theta)


#: Step scales by name, for configs and the command line.
STEP_SCALES: dict[str, type[StepScale]] = {"literal": LiteralStep, "normalized": NormalizedStep}
