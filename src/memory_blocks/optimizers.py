"""Inner optimizers: how the memory turns its gradients into weight updates.

The built-in optimizers forget with ``W_t = (1 - alpha_t) W_{t-1} + step_t`` (paper eq. 14).

- :class:`GradientDescent`: ``step_t = -theta_t g_t`` (TTT's rule; with a linear memory and no
  forgetting, the delta rule).
- :class:`Momentum`: the surprise with momentum, ``S_t = eta_t S_{t-1} - theta_t g_t`` and
  ``step_t = S_t`` (paper eq. 13).

- :class:`Muon`: the surprise of :class:`Momentum`, orthogonalised by Newton-Schulz steps
  (ATLAS) and written once per chunk, at the chunk's last token:
  ``W_e = (1 - alpha_e) W_{e-1} + C * orth(S_e)`` (docs/components/optimizers.md).

GD and momentum are linear recurrences in the gradients, which is what lets the chunked
parallel form be exact token by token. Muon's orthogonalisation is not linear; it is defined
per chunk (chunk size 1: the per-token rule), and both forms of ``memorize`` compute that
definition.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GradientDescent", "InnerOptimizer", "Momentum", "Muon", "OPTIMIZERS"]


class InnerOptimizer:
    """Base class; ``uses_momentum`` says whether the optimizer needs the ``eta`` gate,
    ``newton_schulz_steps`` (0 for none) how many orthogonalisation steps a chunk's write takes."""

    uses_momentum: bool = False
    newton_schulz_steps: int = 0


@dataclass(frozen=True)
class GradientDescent(InnerOptimizer):
    """``W_t = (1 - alpha_t) W_{t-1} - theta_t g_t``: no momentum."""

    uses_momentum = False


@dataclass(frozen=True)
class Momentum(InnerOptimizer):
    """``S_t = eta_t S_{t-1} - theta_t g_t``, ``W_t = (1 - alpha_t) W_{t-1} + S_t`` (eqs. 13-14)."""

    uses_momentum = True


@dataclass(frozen=True)
class Muon(InnerOptimizer):
    """Momentum orthogonalised by Newton-Schulz steps, written once per chunk (ATLAS).

    With ``C`` the chunk size and ``e`` a chunk's last token::

        S_t = eta_t S_{t-1} - theta_t g_t                (every token, as Momentum)
        W_t = (1 - alpha_t) W_{t-1}                      (inside the chunk: no write)
        W_e = (1 - alpha_e) W_{e-1} + C * orth(S_e)      (the chunk's write)

    ``orth(S) = ||S||_F NS(S) / ||NS(S)||_F``: the quintic Newton-Schulz iteration
    (coefficients 3.4445, -4.7750, 2.0315) flattens the spectrum, and the rescaling keeps the
    Frobenius size of the step, so that the layer's step scale keeps its meaning; the factor
    ``C`` makes one chunk's write as large as the ``C`` momentum writes it replaces. Vectors
    (gains, biases) are not orthogonalised. Chunk size 1 gives the per-token rule.

    Args:
        steps: Newton-Schulz iterations (>= 1).

    Raises:
        ValueError: when ``steps`` is not an integer >= 1.
    """

    steps: int = 5
    uses_momentum = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"Muon: steps must be an integer >= 1, got {self.steps!r}")

    @property
    def newton_schulz_steps(self) -> int:  # type: ignore[override]
        return self.steps


#: Optimizer classes by name, for configs and the command line.
OPTIMIZERS: dict[str, type[InnerOptimizer]] = {"gd": GradientDescent, "momentum": Momentum, "muon": Muon}
