"""Closed forms of the momentum-and-forgetting recurrence inside one chunk (paper eqs. 13-14, 16).

Inside a chunk every gradient ``g_i`` is taken at the chunk-start weights, so the recurrence

    S_t = eta_t S_{t-1} - theta_t g_t        (eq. 13)
    W_t = (1 - alpha_t) W_{t-1} + S_t        (eq. 14)

is linear in ``(W_s, S_s, g_1..g_L)`` with scalar coefficients per (batch, head, token):

    W_t = beta_t W_s + gamma_t S_s - sum_{i<=t} A_{ti} g_i
    S_t = E_t S_s - sum_{i<=t} B_{ti} g_i

with ``a_j = 1 - alpha_j``, ``P^a_{ts} = prod_{s<j<=t} a_j`` (lower triangular, ones on the
diagonal), ``beta_t = prod_{j<=t} a_j``, ``E_t = prod_{j<=t} eta_j``, ``B = P^eta diag(theta)``,
``gamma = P^a E`` and ``A = P^a P^eta diag(theta)``. Without momentum (plain gradient descent,
``S_t = -theta_t g_t``) ``A = P^a diag(theta)`` and ``gamma`` is absent.

Products are taken with ``cumprod`` (never ``exp(cumsum(log))``) so that the edge values
``alpha = 1`` and ``eta = 0`` are exact and their gradients finite. Products below ``eps**2`` of the
dtype (gates are at most 1, so these are relative sizes) are set to zero: their contribution
is far below rounding, and left alone their products with activations would become subnormal
numbers, which make CPU arithmetic many times slower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "ChunkCoefficients",
    "Update",
    "chunk_coefficients",
    "momentum_at_end",
    "segment_products",
    "weights_at",
]


def _flush(x: Tensor) -> Tensor:
    """Zero the entries so small that they would turn subnormal in later products."""
    info = torch.finfo(x.dtype)
    # Exact zeros pass through: a product that is zero because one factor is (alpha = 1,
    # eta = 0) still has a gradient with respect to that factor.
    tiny = (x.abs() < info.eps * info.eps) & (x != 0)
    return torch.where(tiny, torch.zeros((), dtype=x.dtype, device=x.device), x)


def segment_products(a: Float[Tensor, "*batch chunk"]) -> Float[Tensor, "*batch chunk chunk"]:
    """``P[..., t, s] = prod_{s < j <= t} a_j`` for ``s <= t`` (1 on the diagonal), 0 above it.

    Args:
        a: ``(*batch, chunk)`` the per-token factors (a decay's keep ``1 - alpha``, or ``eta``).

    Returns:
        ``(*batch, chunk, chunk)`` the lower-triangular matrix ``P`` of segment products.
    """
    n = a.shape[-1]
    idx = torch.arange(n, device=a.device)
    strictly_below = idx[:, None] > idx[None, :]
    x = torch.where(strictly_below, a.unsqueeze(-1), torch.ones((), dtype=a.dtype, device=a.device))
    return _flush(x.cumprod(-2) * (idx[:, None] >= idx[None, :]))


@dataclass(frozen=True)
class ChunkCoefficients:
    """Coefficients of one chunk (or of a stack of chunks along leading dimensions).

    Attributes:
        beta: ``(*batch, L)``, weight of the start weights in ``W_t``; ``None`` when it is all
            ones (no forgetting).
        gamma: ``(*batch, L)``, weight of the start momentum in ``W_t``; ``None`` without momentum.
        mix: lr key -> ``(*batch, L, L)``, ``A`` for the learning rate of that key.
        momentum_decay: ``(*batch,)``, ``E_L``, weight of the start momentum in ``S_L``;
            ``None`` without momentum.
        momentum_mix: lr key -> ``(*batch, L)``, row ``B_{L, .}``; empty without momentum.
    """

    beta: Tensor | None
    gamma: Tensor | None
    mix: dict[str, Tensor]
    momentum_decay: Tensor | None
    momentum_mix: dict[str, Tensor]

    def unbind(self) -> list[ChunkCoefficients]:
        """The coefficients of each chunk stacked along the dimension just before the chunk's.

        One ``unbind`` per field: its backward stacks the gradients once, where indexing each
        chunk separately would allocate a full-size zero gradient per chunk.
        """

        def split(t: Tensor | None, dim: int, n: int) -> list[Tensor | None]:
            return [None] * n if t is None else list(t.unbind(dim))

        n = self.mix[next(iter(self.mix))].shape[-3]
        beta = split(self.beta, -2, n)
        gamma = split(self.gamma, -2, n)
        decay = split(self.momentum_decay, -1, n)
        mix = {k: split(m, -3, n) for k, m in self.mix.items()}
        mom_mix = {k: split(m, -2, n) for k, m in self.momentum_mix.items()}
        return [
            ChunkCoefficients(
                beta[i], gamma[i], {k: mix[k][i] for k in mix}, decay[i],
                {k: mom_mix[k][i] for k in mom_mix},
            )
            for i in range(n)
        ]


def chunk_coefficients(
    lr: dict[str, Float[Tensor, "*batch chunk"]],
    momentum: Float[Tensor, "*batch chunk"] | None,
    decay: Float[Tensor, "*batch chunk"] | None,
) -> ChunkCoefficients:
    """Coefficients of the closed form for chunks laid along the last dimension.

    Args:
        lr: learning-rate key -> ``theta`` (several keys when fast-weight tensors have their own
            learning rates; the keys are whatever the caller maps parameters to).
        momentum: ``eta``, or ``None`` for plain gradient descent.
        decay: ``alpha``, or ``None`` for no forgetting.

    All three are ``(*batch, chunk)``.

    Returns:
        The :class:`ChunkCoefficients` of the chunks, with leading dimensions ``*batch``.
    """
    any_lr = next(iter(lr.values()))
    if decay is None:
        n = any_lr.shape[-1]
        idx = torch.arange(n, device=any_lr.device)
        p_alpha = (idx[:, None] >= idx[None, :]).to(any_lr.dtype).expand(*any_lr.shape, n)
        beta = None
    else:
        keep = 1 - decay
        p_alpha = segment_products(keep)
        beta = _flush(keep.cumprod(-1))
    if momentum is None:
        mix = {k: p_alpha * theta.unsqueeze(-2) for k, theta in lr.items()}
        return ChunkCoefficients(beta, None, mix, None, {})
    p_eta = segment_products(momentum)
    e = _flush(momentum.cumprod(-1))
    gamma = _flush((p_alpha @ e.unsqueeze(-1)).squeeze(-1))
    p_both = _flush(p_alpha @ p_eta)
    mix = {k: p_both * theta.unsqueeze(-2) for k, theta in lr.items()}
    momentum_mix = {k: p_eta[..., -1, :] * theta for k, theta in lr.items()}
    return ChunkCoefficients(beta, gamma, mix, e[..., -1], momentum_mix)


def _bh(c: Tensor, like: Tensor) -> Tensor:
    """A (batch, heads) coefficient broadcast over a (batch, heads, *shape) tensor."""
    return c.reshape(*c.shape, *([1] * (like.ndim - 2)))


#: ``update(name, W, beta, S, gamma, c)`` returns ``beta W + gamma S - sum_i c_i g_i`` for a
#: fast weight's factored per-token gradients ``g_i`` (``beta`` ``None``: 1; ``S`` and ``gamma``
#: ``None``: no momentum term); ``beta``, ``gamma`` of shape ``(batch, heads)``, ``c`` of shape
#: ``(batch, heads, M)``.
Update = Callable[[str, Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor], Tensor]


def weights_at(
    weights: dict[str, Tensor],
    momentum: dict[str, Tensor],
    coef: ChunkCoefficients,
    lr_keys: dict[str, str],
    row: int,
    subtract: Callable[[str, Tensor, Tensor], Tensor] | None = None,
    *,
    update: Update | None = None,
) -> dict[str, Tensor]:
    """``W`` after token ``row`` of the segment: ``beta W_s + gamma S_s - sum_i A_{row,i} g_i``.

    Either ``subtract(name, base, c)`` returns ``base - sum_i c_i g_i`` for coefficients ``c`` of
    shape ``(batch, heads, M)`` over the segment's tokens, or ``update`` (:data:`Update`) does
    the whole combination (fused where it can be).
    """
    out = {}
    for name, w in weights.items():
        c = coef.mix[lr_keys[name]][..., row, :]
        beta = None if coef.beta is None else coef.beta[..., row]
        gamma = None if coef.gamma is None else coef.gamma[..., row]
        if update is not None:
            out[name] = update(name, w, beta, None if gamma is None else momentum[name], gamma, c)
            continue
        if subtract is None:
            raise ValueError("weights_at: pass subtract or update")
        base = w if beta is None else _bh(beta, w) * w
        if gamma is not None:
            base = torch.addcmul(base, _bh(gamma, w), momentum[name])
        out[name] = subtract(name, base, c)
    return out


def momentum_at_end(
    momentum: dict[str, Tensor],
    coef: ChunkCoefficients,
    lr_keys: dict[str, str],
    subtract: Callable[[str, Tensor, Tensor], Tensor] | None = None,
    *,
    update: Update | None = None,
) -> dict[str, Tensor]:
    """``S`` after the segment's last token: ``E_L S_s - sum_i B_{L,i} g_i`` (unchanged
    without momentum); ``subtract`` or ``update`` as in :func:`weights_at`."""
    if coef.momentum_decay is None:
        return dict(momentum)
    out = {}
    for name, s in momentum.items():
        c = coef.momentum_mix[lr_keys[name]]
        if update is not None:
            out[name] = update(name, s, coef.momentum_decay, None, None, c)
            continue
        if subtract is None:
            raise ValueError("momentum_at_end: pass subtract or update")
        out[name] = subtract(name, _bh(coef.momentum_decay, s) * s, c)
    return out
