"""``token_powers`` (the per-token ``l_q`` scales, hand-written backward) against each token's
matrix built and differentiated by autograd, in float64, and against the sums taken from the
materialised matrices directly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks.functional.token_powers import token_powers, token_powers_reference


def _inputs(seed: int, lead: tuple[int, ...], out: int, inn: int, rows: int, coefs: list[bool],
            broadcast_a: bool) -> tuple[list[torch.Tensor], list]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    a = r(*((1,) * len(lead) if broadcast_a else lead), out, inn)
    delta, x = r(*lead, rows, out), r(*lead, rows, inn)
    mix = torch.rand(*lead, rows, rows, generator=g, dtype=torch.float64).tril().requires_grad_()
    dense = [(r(*lead, rows, 1) if has_c else None, r(*lead, out, inn)) for has_c in coefs]
    tensors = [a, delta, x, mix] + [t for pair in dense for t in pair if t is not None]
    return tensors, dense


def _materialised(a, dense, delta, x, mix, q):  # noqa: ANN001, ANN202
    """Every token's accumulator written out at once, then its power sum."""
    acc = a.unsqueeze(-3) + torch.einsum("...tj,...jo,...ji->...toi", mix, delta, x)
    for c, m in dense:
        acc = acc + (m.unsqueeze(-3) if c is None else c.unsqueeze(-1) * m.unsqueeze(-3))
    return acc.abs().pow(q).sum(dim=(-2, -1))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lead=st.sampled_from([(1,), (2,), (2, 3)]),
    out=st.integers(1, 6),
    inn=st.integers(1, 6),
    rows=st.integers(1, 5),
    coefs=st.lists(st.booleans(), max_size=3),
    q=st.sampled_from([2.0, 2.5, 3.0, 4.0]),
    broadcast_a=st.booleans(),
)
def test_token_powers_equal_the_autograd_loop(
    seed: int, lead: tuple[int, ...], out: int, inn: int, rows: int, coefs: list[bool], q: float,
    broadcast_a: bool,
) -> None:
    """Values and gradients of every input (start, directions, coefficients, factors, mix)
    equal the reference loop's, and the values the materialised matrices' sums."""
    tensors, dense = _inputs(seed, lead, out, inn, rows, coefs, broadcast_a)
    a, delta, x, mix = tensors[:4]
    got = token_powers(a, dense, delta, x, mix, q)
    want = token_powers_reference(a, dense, delta, x, mix, q)
    assert got.shape == (*lead, rows)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, _materialised(a, dense, delta, x, mix, q), rtol=1e-12, atol=1e-12)
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    g_got = torch.autograd.grad(got, tensors, w)
    g_want = torch.autograd.grad(want, tensors, w)
    for u, v in zip(g_got, g_want):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("q", [3.0, 4.0])
def test_token_powers_second_derivatives(q: float) -> None:
    """A recorded backward pass (``create_graph``) goes through the autograd form: gradcheck and
    gradgradcheck of the whole function."""
    tensors, dense = _inputs(5, (2,), 3, 4, 3, [True, False], False)
    n = len(tensors)

    def fn(*ts: torch.Tensor) -> torch.Tensor:
        a, delta, x, mix, c0, m0, m1 = ts
        return token_powers(a, [(c0, m0), (None, m1)], delta, x, mix, q)

    assert n == 7
    assert torch.autograd.gradcheck(fn, tensors)
    assert torch.autograd.gradgradcheck(fn, tensors)
