"""Inner optimizers: how the memory turns its gradients into weight updates.

Both built-in optimizers forget with ``W_t = (1 - alpha_t) W_{t-1} + step_t`` (paper eq. 14).

- :class:`GradientDescent`: ``step_t = -theta_t g_t`` (TTT's rule; with a linear memory and no
  forgetting, the delta rule).
- :class:`Momentum`: the surprise with momentum, ``S_t = eta_t S_{t-1} - theta_t g_t`` and
  ``step_t = S_t`` (paper eq. 13).

Both are linear recurrences in the gradients, which is what lets the chunked parallel form be
exact. (A Muon-style optimizer, which orthogonalises the momentum, is not linear and is not
offered here.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GradientDescent", "InnerOptimizer", "Momentum", "OPTIMIZERS"]


class InnerOptimizer:
    """Base class; ``uses_momentum`` says whether the optimizer needs the ``eta`` gate."""

    uses_momentum: bool = False


@dataclass(frozen=True)
class GradientDescent(InnerOptimizer):
    """``W_t = (1 - alpha_t) W_{t-1} - theta_t g_t``: no momentum."""

    uses_momentum = False


@dataclass(frozen=True)
class Momentum(InnerOptimizer):
    """``S_t = eta_t S_{t-1} - theta_t g_t``, ``W_t = (1 - alpha_t) W_{t-1} + S_t`` (eqs. 13-14)."""

    uses_momentum = True


#: Optimizer classes by name, for configs and the command line.
OPTIMIZERS: dict[str, type[InnerOptimizer]] = {"gd": GradientDescent, "momentum": Momentum}
