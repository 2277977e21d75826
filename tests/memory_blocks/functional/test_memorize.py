"""memorize (the parallel form) against memorize_naive (the token-by-token oracle), float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import LinearMemory, memorize, memorize_naive
from memory_blocks.functional import dot_product, huber, lp_error

from .cases import MEMORY_KINDS, assert_close, assert_states_close, make_inputs, make_memory


@pytest.mark.parametrize("kind", MEMORY_KINDS)
@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    seq=st.integers(1, 19),
    chunk=st.integers(1, 7),
    block_chunks=st.integers(1, 3),
    momentum=st.booleans(),
    decay=st.booleans(),
)
def test_parallel_equals_naive(
    kind: str, seed: int, batch: int, heads: int, seq: int, chunk: int, block_chunks: int,
    momentum: bool, decay: bool,
) -> None:
    mem = make_memory(kind, 4, seed)
    x = make_inputs(seed, batch, heads, seq, 4, momentum=momentum, decay=decay)
    y_ref, s_ref = memorize_naive(mem, *x.args(), chunk_size=chunk)
    y, s = memorize(mem, *x.args(), chunk_size=chunk, block_chunks=block_chunks)
    assert_close(y, y_ref)
    assert_states_close(s, s_ref)


@pytest.mark.parametrize("kind", ["mlp2", "module"])
def test_parallel_equals_naive_on_device(kind: str, device: torch.device) -> None:
    mem = make_memory(kind, 8, 3).to(device)
    x = make_inputs(3, 2, 2, 37, 8, lr_scale=0.1, device=device)
    y_ref, s_ref = memorize_naive(mem, *x.args(), chunk_size=5)
    y, s = memorize(mem, *x.args(), chunk_size=5, block_chunks=3)
    assert y.device.type == device.type
    assert_close(y, y_ref)
    assert_states_close(s, s_ref)


@pytest.mark.parametrize(
    "objective", [lambda p, t: huber(p, t, 0.3), lambda p, t: lp_error(p, t, 3.0), dot_product]
)
def test_other_objectives(objective) -> None:
    mem = make_memory("mlp2", 4, 1)
    x = make_inputs(1, 2, 1, 13, 4, lr_scale=0.1)
    y_ref, s_ref = memorize_naive(mem, *x.args(), chunk_size=4, objective=objective)
    y, s = memorize(mem, *x.args(), chunk_size=4, block_chunks=2, objective=objective)
    assert_close(y, y_ref)
    assert_states_close(s, s_ref)


@pytest.mark.parametrize("kind", ["mlp2", "linear_bias", "module"])
def test_per_tensor_learning_rates(kind: str) -> None:
    mem = make_memory(kind, 4, 2)
    x = make_inputs(2, 2, 2, 11, 4)
    g = torch.Generator().manual_seed(5)
    lr = {n: torch.rand(2, 2, 11, generator=g, dtype=torch.float64) * 0.5 for n in mem.initial_weights()}
    args = (x.q, x.k, x.v, lr, x.momentum, x.decay)
    y_ref, s_ref = memorize_naive(mem, *args, chunk_size=3)
    y, s = memorize(mem, *args, chunk_size=3, block_chunks=2)
    assert_close(y, y_ref)
    assert_states_close(s, s_ref)
    # Changing one tensor's learning rate changes the result: the dict is really used.
    name = next(iter(lr))
    lr2 = dict(lr, **{name: lr[name] * 0.5})
    y2, _ = memorize(mem, x.q, x.k, x.v, lr2, x.momentum, x.decay, chunk_size=3)
    assert not torch.allclose(y2, y)


def test_delta_rule_closed_formula() -> None:
    """Chunk 1, linear memory, no momentum, no forgetting: the delta rule, written out."""
    g = torch.Generator().manual_seed(0)
    b, h, t, d_in, d_out = 2, 3, 9, 5, 4
    q = torch.randn(b, h, t, d_in, generator=g, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(b, h, t, d_in, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(b, h, t, d_out, generator=g, dtype=torch.float64)
    theta = torch.rand(b, h, t, generator=g, dtype=torch.float64)
    mem = LinearMemory(d_in, d_out, init_std=0.5).double()
    w = mem.weight.detach().expand(b, h, d_out, d_in).clone()
    expected = []
    for i in range(t):
        err = torch.einsum("bhoi,bhi->bho", w, k[:, :, i]) - v[:, :, i]
        w = w - 2 * theta[:, :, i, None, None] * torch.einsum("bho,bhi->bhoi", err, k[:, :, i])
        expected.append(torch.einsum("bhoi,bhi->bho", w, q[:, :, i]))
    expected_y = torch.stack(expected, dim=2)
    for fn in (memorize, memorize_naive):
        y, s = fn(mem, q, k, v, theta, None, None, chunk_size=1)
        assert_close(y, expected_y, 1e-10)
        assert_close(s.weights["weight"], w, 1e-10)


@pytest.mark.parametrize("kind", ["mlp2", "gated", "module"])
def test_chunk_size_one_is_the_online_recurrence(kind: str) -> None:
    """With C = 1 every gradient is taken at the previous token's weights."""
    mem = make_memory(kind, 4, 7)
    x = make_inputs(7, 1, 2, 9, 4)
    state = None
    ys = []
    for i in range(9):  # one token per call: each call is its own chunk
        y, state = memorize_naive(mem, *x.cut(i, i + 1).args(), chunk_size=1, state=state)
        ys.append(y)
    y_par, _ = memorize(mem, *x.args(), chunk_size=1)
    assert_close(y_par, torch.cat(ys, dim=2))


def test_block_size_does_not_change_the_result() -> None:
    mem = make_memory("mlp2", 4, 11)
    x = make_inputs(11, 2, 1, 40, 4)
    ys = [memorize(mem, *x.args(), chunk_size=4, block_chunks=b)[0] for b in (1, 2, 3, 16)]
    for y in ys[1:]:
        assert_close(y, ys[0], 1e-10)


def test_no_grad_matches_grad_mode() -> None:
    mem = make_memory("mlp2", 4, 12)
    x = make_inputs(12, 1, 1, 10, 4)
    y1, _ = memorize(mem, *x.args(), chunk_size=3)
    with torch.no_grad():
        y2, s2 = memorize(mem, *x.args(), chunk_size=3)
    assert not y2.requires_grad and not any(w.requires_grad for w in s2.weights.values())
    assert_close(y2, y1.detach(), 1e-12)


def test_long_blocks_with_tiny_momentum_products() -> None:
    """Products of many small momentum values underflow inside long blocks; the parallel form
    (which flushes them to exact zeros) still equals the naive loop."""
    mem = make_memory("mlp2", 4, 13)
    x = make_inputs(13, 1, 1, 64, 4, edges=False, lr_scale=0.2)
    args = list(x.args())
    args[4] = args[4] * 1e-3  # eta around 5e-4: products over a 64-token block reach 1e-200
    y, _ = memorize(mem, *args, chunk_size=8, block_chunks=8)
    y_ref, _ = memorize_naive(mem, *args, chunk_size=8)
    assert_close(y, y_ref, 1e-10)
