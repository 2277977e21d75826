"""RotaryEmbedding and SwiGLU against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_blocks.layers import RotaryEmbedding, SwiGLU

FAST = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def randn(seed: int, *shape: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)


def rotary_complex(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as complex multiplication: pair (x_a, x_{a+d/2}) -> (x_a + i x_{a+d/2}) e^{i p w_a}."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:])
    freqs = torch.tensor([base ** (-2 * a / x.shape[-1]) for a in range(half)], dtype=torch.float64)
    angles = positions.double().cpu()[:, None] * freqs[None, :]
    rotated = z * torch.polar(torch.ones_like(angles), angles).to(x.device)
    return torch.cat([rotated.real, rotated.imag], dim=-1)


@FAST
@given(
    seq=st.integers(1, 20),
    half=st.integers(1, 8),
    offset=st.integers(0, 10_000),
    base=st.sampled_from([100.0, 10000.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotary_equals_complex_formula_and_offset(device, seq, half, offset, base, seed):
    dim = 2 * half
    rope = RotaryEmbedding(dim, base=base)
    x = randn(seed, 2, 3, seq, dim, device=device)
    positions = torch.arange(offset, offset + seq, device=device)
    out = rope(x, offset=offset)
    # float64 sin/cos of angles up to ~10^4 rad carry rounding of ~eps * angle ~ 2e-12 (seen on
    # CUDA: 1.07e-12 at offset 4075), so the bound scales with the largest angle
    atol = 1e-12 * max(1.0, float(offset + seq))
    torch.testing.assert_close(out, rotary_complex(x, positions, base), rtol=1e-12, atol=atol)
    torch.testing.assert_close(rope(x, positions=positions), out, rtol=0, atol=0)
    # A rotation: norms of every pair, hence of every vector, are kept.
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)


@FAST
@given(
    i=st.integers(0, 500),
    j=st.integers(0, 500),
    shift=st.integers(0, 10_000),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotary_scores_depend_on_distance_only(device, i, j, shift, seed):
    rope = RotaryEmbedding(8)
    q, k = randn(seed, 2, 1, 8, device=device).unbind(0)

    def score(a: int, b: int) -> torch.Tensor:
        return (rope(q, offset=a) * rope(k, offset=b)).sum()

    torch.testing.assert_close(score(i + shift, j + shift), score(i, j), rtol=1e-9, atol=1e-9)


def test_rotary_validates():
    with pytest.raises(ValueError, match="dim must be even"):
        RotaryEmbedding(5)
    rope = RotaryEmbedding(4)
    with pytest.raises(ValueError, match=r"expected \(\.\.\., seq, 4\)"):
        rope(torch.randn(3, 6))
    with pytest.raises(ValueError, match="offset or positions, not both"):
        rope(torch.randn(3, 4), offset=1, positions=torch.arange(3))
    with pytest.raises(ValueError, match="offset must be >= 0"):
        rope(torch.randn(3, 4), offset=-1)


@FAST
@given(
    dim=st.integers(1, 24),
    hidden=st.one_of(st.none(), st.integers(1, 40)),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_swiglu_equals_formula(device, dim, hidden, bias, seed):
    torch.manual_seed(seed)
    ffn = SwiGLU(dim, hidden, multiple_of=8, bias=bias).to(device=device, dtype=torch.float64)
    if hidden is None:
        assert ffn.hidden % 8 == 0 and ffn.hidden >= 8 * dim / 3 > ffn.hidden - 8
    else:
        assert ffn.hidden == hidden
    x = randn(seed, 2, 5, dim, device=device)
    w_gate, w_up = ffn.gate_up.weight.chunk(2, dim=0)
    b_gate, b_up = ffn.gate_up.bias.chunk(2) if bias else (0.0, 0.0)
    gate = x @ w_gate.T + b_gate
    up = x @ w_up.T + b_up
    expected = (gate * torch.sigmoid(gate) * up) @ ffn.down.weight.T
    if bias:
        expected = expected + ffn.down.bias
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


def test_swiglu_default_hidden_and_validation():
    assert SwiGLU(96).hidden == 256  # 8 * 96 / 3 = 256 exactly
    assert SwiGLU(64).hidden == 192  # 170.7 rounded up to a multiple of 64
    assert SwiGLU(64, multiple_of=1).hidden == math.ceil(8 * 64 / 3)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        SwiGLU(0)
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        SwiGLU(4, 0)
    with pytest.raises(ValueError, match="expected last dimension 4"):
        SwiGLU(4)(torch.randn(2, 3))
    # Every parameter learns.
    ffn = SwiGLU(4, 8, bias=True)
    ffn(torch.randn(3, 4)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ffn.parameters())
