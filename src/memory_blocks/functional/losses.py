"""Inner losses (attentional biases) as pure functions: per-token loss from prediction and target.

Each maps ``pred, target`` of shape ``(*batch, dim_out)`` to a per-token loss ``(*batch)``;
the memory's gradient step differentiates it with respect to the fast weights.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["squared_error", "huber", "lp_error", "dot_product", "is_squared_error"]


def squared_error(
    pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"]
) -> Float[Tensor, "*batch"]:
    """``||pred - target||_2^2``, summed over features, no 1/2 (paper eq. 12).

    Args:
        pred: ``(*batch, dim_out)`` predictions of the memory.
        target: ``(*batch, dim_out)`` targets (the values to store).

    Returns:
        ``(*batch)`` the loss of each token, summed over features.
    """
    return (pred - target).pow(2).sum(-1)


def is_squared_error(objective: object) -> bool:
    """Whether ``objective`` is the squared error (the function, or an objective object whose
    ``function`` attribute is it): the hand-written fast path knows its derivatives."""
    return objective is squared_error or getattr(objective, "function", None) is squared_error


def huber(
    pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"], delta: int | float
) -> Float[Tensor, "*batch"]:
    """Huber loss per feature, summed: ``r^2`` inside ``|r| <= delta``, ``2 delta |r| - delta^2``
    outside (continuous with a continuous gradient; MIRAS' robust attentional bias).

    Args:
        pred: ``(*batch, dim_out)`` predictions of the memory.
        target: ``(*batch, dim_out)`` targets (the values to store).
        delta: the threshold on ``|pred - target|`` where the loss turns from quadratic to linear.

    Returns:
        ``(*batch)`` the loss of each token, summed over features.
    """
    r = (pred - target).abs()
    return torch.where(r <= delta, r.pow(2), 2 * delta * r - delta * delta).sum(-1)


def lp_error(
    pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"], p: int | float
) -> Float[Tensor, "*batch"]:
    """``||pred - target||_p^p`` summed over features (MIRAS' l_p attentional bias).

    Args:
        pred: ``(*batch, dim_out)`` predictions of the memory.
        target: ``(*batch, dim_out)`` targets (the values to store).
        p: the exponent of the norm.

    Returns:
        ``(*batch)`` the loss of each token, summed over features.
    """
    return (pred - target).abs().pow(p).sum(-1)


def dot_product(
    pred: Float[Tensor, "*batch dim_out"], target: Float[Tensor, "*batch dim_out"]
) -> Float[Tensor, "*batch"]:
    """``-<pred, target>``: the Hebbian (linear-attention) attentional bias.

    Args:
        pred: ``(*batch, dim_out)`` predictions of the memory.
        target: ``(*batch, dim_out)`` targets (the values to store).

    Returns:
        ``(*batch)`` the negated dot product of each token.
    """
    return -(pred * target).sum(-1)
