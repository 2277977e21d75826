"""The closed-form chunk coefficients against the recurrence they solve."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks.functional import chunk_coefficients, segment_products


def _gates(seed: int, n: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        x = torch.rand(2, n, generator=g, dtype=torch.float64)
        u = torch.rand(2, n, generator=g, dtype=torch.float64)
        out.append(torch.where(u < 0.2, 0.0, torch.where(u > 0.8, 1.0, x)).to(dtype))
    return tuple(out)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), use_momentum=st.booleans(), use_decay=st.booleans())
def test_closed_form_solves_the_recurrence(seed: int, n: int, use_momentum: bool, use_decay: bool) -> None:
    """Run S_t = eta S - theta g, W_t = (1 - alpha) W + S with W_s, S_s and each g_i as
    independent unit directions; the coefficients must equal the closed form's."""
    theta, eta, alpha = _gates(seed, n)
    eta_ = eta if use_momentum else None
    alpha_ = alpha if use_decay else None
    coef = chunk_coefficients({"": theta}, eta_, alpha_)
    # Coordinates: [W_s, S_s, g_1 .. g_n].
    dims = 2 + n
    w = torch.zeros(2, dims, dtype=torch.float64)
    w[:, 0] = 1
    s = torch.zeros(2, dims, dtype=torch.float64)
    s[:, 1] = 1
    for t in range(n):
        g = torch.zeros(2, dims, dtype=torch.float64)
        g[:, 2 + t] = 1
        if use_momentum:
            s = eta[:, t, None] * s - theta[:, t, None] * g
            step = s
        else:
            step = -theta[:, t, None] * g
        w = (1 - alpha[:, t, None]) * w + step if use_decay else w + step
        beta_t = torch.ones(2, dtype=torch.float64) if coef.beta is None else coef.beta[:, t]
        torch.testing.assert_close(w[:, 0], beta_t)
        gamma_t = torch.zeros(2, dtype=torch.float64) if coef.gamma is None else coef.gamma[:, t]
        torch.testing.assert_close(w[:, 1] if use_momentum else torch.zeros(2, dtype=torch.float64), gamma_t)
        torch.testing.assert_close(-w[:, 2:], coef.mix[""][:, t, :])
    if use_momentum:
        torch.testing.assert_close(s[:, 1], coef.momentum_decay)
        torch.testing.assert_close(-s[:, 2:], coef.momentum_mix[""])


def test_segment_products_matches_loops() -> None:
    a = torch.rand(3, 6, dtype=torch.float64)
    p = segment_products(a)
    for t in range(6):
        for s in range(6):
            expected = torch.prod(a[:, s + 1 : t + 1], dim=-1) if s <= t else torch.zeros(3, dtype=torch.float64)
            torch.testing.assert_close(p[:, t, s], expected)


def test_edge_gates_have_finite_gradients() -> None:
    """alpha = 1 and eta = 0 are exact and differentiable (no log of zero)."""
    theta, eta, alpha = _gates(0, 8)
    eta = eta.clone().requires_grad_()
    alpha = alpha.clone().requires_grad_()
    eta.data[:, 3] = 0.0
    alpha.data[:, 5] = 1.0
    coef = chunk_coefficients({"": theta}, eta, alpha)
    total = coef.mix[""].sum() + coef.gamma.sum() + coef.beta.sum() + coef.momentum_mix[""].sum()
    total.backward()
    assert torch.isfinite(eta.grad).all() and torch.isfinite(alpha.grad).all()


def test_underflowing_products_are_exact_zeros_not_subnormals() -> None:
    eta = torch.full((1, 200), 0.5)
    coef = chunk_coefficients({"": torch.full((1, 200), 0.1)}, eta, torch.full((1, 200), 0.01))
    tiny = torch.finfo(torch.float32).tiny
    for t in (coef.mix[""], coef.gamma, coef.momentum_mix[""], coef.momentum_decay):
        a = t.abs()
        assert not ((a > 0) & (a < tiny)).any()
    assert coef.momentum_decay.item() == 0.0  # 0.5 ** 200 flushed
