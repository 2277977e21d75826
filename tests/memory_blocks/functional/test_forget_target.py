"""Forgetting towards W_0 (forget_target="init"): the parallel form equals the token loop,
forward, streaming and every gradient (W_0's included, second order too), in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import MLPMemory, memorize, memorize_naive

from .cases import MEMORY_KINDS, assert_close, assert_states_close, make_inputs, make_memory


def _loss(y: torch.Tensor, state) -> torch.Tensor:  # noqa: ANN001
    total = (y * y.detach().sin()).sum()
    for w in state.weights.values():
        total = total + (w * w).sum()
    for s in state.momentum.values():
        total = total + (s * s).sum()
    return total


@pytest.mark.parametrize("kind", MEMORY_KINDS)
@settings(max_examples=5, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    seq=st.integers(1, 23),
    chunk=st.integers(1, 5),
    block_chunks=st.integers(1, 3),
    momentum=st.booleans(),
    checkpoint=st.booleans(),
)
def test_parallel_equals_naive_with_gradients(
    kind: str, seed: int, seq: int, chunk: int, block_chunks: int, momentum: bool, checkpoint: bool
) -> None:
    mem = make_memory(kind, 4, seed)
    x = make_inputs(seed, 2, 2, seq, 4, momentum=momentum, lr_scale=0.3)
    leaves = [t.requires_grad_() for t in x.args() if t is not None]
    params = list(mem.parameters())
    y1, s1 = memorize_naive(mem, *x.args(), chunk_size=chunk, forget_target="init")
    y2, s2 = memorize(mem, *x.args(), chunk_size=chunk, block_chunks=block_chunks, checkpoint=checkpoint,
                      forget_target="init")
    assert_close(y2, y1)
    assert_states_close(s2, s1)
    g1 = torch.autograd.grad(_loss(y1, s1), leaves + params, allow_unused=True, materialize_grads=True)
    g2 = torch.autograd.grad(_loss(y2, s2), leaves + params, allow_unused=True, materialize_grads=True)
    for a, b in zip(g2, g1):
        assert_close(a, b, rtol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "mlp2", "mlp3_plain", "gated"])
def test_second_derivatives_equal_naive(kind: str) -> None:
    """Through two hand-written blocks and a partial one, with W_0 reaching each block twice."""
    mem = make_memory(kind, 3, 7)
    x = make_inputs(7, 1, 2, 14, 3, lr_scale=0.3)
    leaves = [t.requires_grad_() for t in x.args() if t is not None] + list(mem.parameters())
    results = []
    for fn, kw in ((memorize_naive, {}), (memorize, {"block_chunks": 2})):
        y, s = fn(mem, *x.args(), chunk_size=3, forget_target="init", **kw)
        g = torch.autograd.grad(_loss(y, s), leaves, create_graph=True)
        gg = torch.autograd.grad(sum((t * t).sum() for t in g), leaves, allow_unused=True, materialize_grads=True)
        results.append(list(g) + list(gg))
    for a, b in zip(*results):
        assert_close(a, b, rtol=1e-7)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), seq=st.integers(2, 24), chunk=st.integers(1, 5),
       cuts=st.lists(st.integers(1, 23), max_size=4))
def test_streaming_in_pieces_equals_one_naive_call(seed: int, seq: int, chunk: int, cuts: list[int]) -> None:
    mem = make_memory("mlp2", 4, seed)
    x = make_inputs(seed, 1, 2, seq, 4, lr_scale=0.3)
    y_full, s_full = memorize_naive(mem, *x.args(), chunk_size=chunk, forget_target="init")
    bounds = sorted({0, seq, *[c for c in cuts if c < seq]})
    state, ys = None, []
    for s, e in zip(bounds, bounds[1:]):
        y, state = memorize(mem, *x.cut(s, e).args(), chunk_size=chunk, block_chunks=2, state=state,
                            forget_target="init")
        ys.append(y)
    assert_close(torch.cat(ys, dim=2), y_full)
    assert_states_close(state, s_full)


def test_the_token_loop_decays_towards_w0() -> None:
    """An independent formula: with no gradient step (theta = 0) the weights after t tokens are
    W_0 + prod(1 - alpha) (W_s - W_0), for any start weights W_s."""
    mem = make_memory("mlp2", 3, 1)
    x = make_inputs(1, 1, 1, 9, 3)
    x.lr.zero_()
    x.momentum.zero_()
    state0 = mem.init_state(1, 1)
    start = {n: w + torch.randn(w.shape, dtype=w.dtype) for n, w in state0.weights.items()}
    state = type(state0)(start, state0.momentum)
    keep = (1 - x.decay[0, 0]).prod()
    for fn in (memorize_naive, memorize):
        _, out = fn(mem, *x.args(), chunk_size=4, state=state, forget_target="init")
        for n, w0 in mem.initial_weights().items():
            assert_close(out.weights[n][0, 0], w0 + keep * (start[n][0, 0] - w0))


def test_without_decay_both_targets_agree_and_bad_target_is_refused() -> None:
    mem = make_memory("mlp2", 4, 3)
    x = make_inputs(3, 1, 1, 10, 4, decay=False)
    y_zero, _ = memorize(mem, *x.args(), chunk_size=4)
    y_init, _ = memorize(mem, *x.args(), chunk_size=4, forget_target="init")
    assert_close(y_init, y_zero)
    for fn in (memorize, memorize_naive):
        with pytest.raises(ValueError, match="forget_target must be one of"):
            fn(mem, *x.args(), chunk_size=4, forget_target="w0")


def test_decay_towards_w0_keeps_a_layernorm_memory_alive() -> None:
    """The reason for the rule: with steps too small to matter, forgetting towards zero shrinks
    the residual-LayerNorm memory to nothing (then subnormal numbers), towards W_0 it stays."""
    torch.manual_seed(0)
    mem = MLPMemory(8, depth=2).double()
    x = make_inputs(0, 1, 1, 2048, 8, edges=False)
    x.lr.fill_(1e-6)
    x.decay.fill_(0.05)
    with torch.no_grad():
        _, zero = memorize(mem, *x.args(), chunk_size=16, forget_target="zero")
        _, init = memorize(mem, *x.args(), chunk_size=16, forget_target="init")
    assert zero.weights["w2"].abs().max() < 1e-20
    assert init.weights["w2"].abs().max() > 0.1
