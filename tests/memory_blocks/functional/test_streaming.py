"""Streaming: pieces of any size with the carried state equal one call; causality; retrieve."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import memorize, memorize_naive, retrieve

from .cases import assert_close, assert_states_close, make_inputs, make_memory


@pytest.mark.parametrize("kind", ["linear_bias", "mlp2", "gated", "module"])
@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    seq=st.integers(2, 24),
    chunk=st.integers(1, 6),
    cuts=st.lists(st.integers(1, 23), max_size=5),
    momentum=st.booleans(),
)
def test_random_splits_equal_one_call(kind: str, seed: int, seq: int, chunk: int, cuts: list[int], momentum: bool) -> None:
    mem = make_memory(kind, 4, seed)
    x = make_inputs(seed, 2, 2, seq, 4, momentum=momentum, lr_scale=0.3)
    y_full, s_full = memorize(mem, *x.args(), chunk_size=chunk, block_chunks=2)
    bounds = sorted({0, seq, *[c for c in cuts if c < seq]})
    state, ys = None, []
    for s, e in zip(bounds, bounds[1:]):
        y, state = memorize(mem, *x.cut(s, e).args(), chunk_size=chunk, block_chunks=2, state=state)
        ys.append(y)
    assert_close(torch.cat(ys, dim=2), y_full)
    assert_states_close(state, s_full)


@pytest.mark.parametrize("fn", [memorize, memorize_naive])
def test_token_by_token_equals_one_call(fn, device: torch.device) -> None:
    mem = make_memory("mlp2", 4, 5).to(device)
    x = make_inputs(5, 2, 1, 13, 4, lr_scale=0.3, device=device)
    y_full, s_full = memorize(mem, *x.args(), chunk_size=4)
    state, ys = None, []
    for t in range(13):
        y, state = fn(mem, *x.cut(t, t + 1).args(), chunk_size=4, state=state)
        ys.append(y)
    assert_close(torch.cat(ys, dim=2), y_full)
    assert_states_close(state, s_full)
    assert state.offset == 13 % 4 and state.chunk_weights is not None


@pytest.mark.parametrize("kind", ["mlp2", "module"])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(0, 14), chunk=st.integers(1, 5))
def test_causality(kind: str, seed: int, t: int, chunk: int) -> None:
    """y_s for s <= t does not change when any input after t changes."""
    mem = make_memory(kind, 4, seed)
    x = make_inputs(seed, 1, 2, 15, 4, lr_scale=0.3)
    y, _ = memorize(mem, *x.args(), chunk_size=chunk, block_chunks=2)
    other = make_inputs(seed + 1, 1, 2, 15, 4, lr_scale=0.3)
    mixed = [None if a is None else torch.cat([a[:, :, : t + 1], b[:, :, t + 1 :]], dim=2)
             for a, b in zip(x.args(), other.args())]
    y2, _ = memorize(mem, *mixed, chunk_size=chunk, block_chunks=2)
    assert_close(y2[:, :, : t + 1], y[:, :, : t + 1], 1e-12)
    if t < 14:
        assert not torch.allclose(y2[:, :, t + 1 :], y[:, :, t + 1 :])


def test_retrieve_reads_the_current_weights_without_writing() -> None:
    mem = make_memory("mlp2", 4, 8)
    x = make_inputs(8, 2, 2, 10, 4, lr_scale=0.3)
    _, state = memorize(mem, *x.args(), chunk_size=3)
    q = make_inputs(9, 2, 2, 6, 4).q
    y = retrieve(mem, state, q)
    assert_close(y, mem.forward_with(state.weights, q), 1e-12)
    # The last retrieval of memorize reads W_T with q_T, and so does retrieve.
    y_last, _ = memorize(mem, *x.args(), chunk_size=3)
    assert_close(retrieve(mem, state, x.q[:, :, -1:]), y_last[:, :, -1:], 1e-10)
    # At W_0: the untrained memory.
    fresh = mem.init_state(2, 2)
    assert_close(retrieve(mem, fresh, q), mem(q), 1e-12)


def test_replacing_weights_in_the_state() -> None:
    """A user may load other weights into a state at a chunk boundary."""
    mem = make_memory("linear", 4, 9)
    x = make_inputs(9, 1, 1, 8, 4)
    _, state = memorize(mem, *x.cut(0, 4).args(), chunk_size=4)
    assert state.offset == 0
    zero = dataclasses.replace(state, weights={"weight": torch.zeros_like(state.weights["weight"])})
    y_ref, _ = memorize_naive(mem, *x.cut(4, 8).args(), chunk_size=4, state=zero)
    y, _ = memorize(mem, *x.cut(4, 8).args(), chunk_size=4, state=zero)
    assert_close(y, y_ref)
    y_orig, _ = memorize(mem, *x.cut(4, 8).args(), chunk_size=4, state=state)
    assert not torch.allclose(y, y_orig)


def test_returned_states_hold_no_subnormal_numbers() -> None:
    """An entry that decays below the smallest normal float comes back as zero, from both forms,
    so that a long stream never computes on subnormal numbers."""
    mem = make_memory("linear", 4, 0, dtype=torch.float32)
    x = make_inputs(0, 1, 1, 8, 4, edges=False)
    args = [t.float() for t in x.args()]
    args[3] = torch.zeros_like(args[3])  # no writes: the start weights only decay
    args[5] = torch.full_like(args[5], 0.5)
    tiny = torch.finfo(torch.float32).tiny
    start = mem.init_state(1, 1)
    state = dataclasses.replace(start, weights={"weight": torch.full((1, 1, 4, 4), tiny * 16)})
    for fn in (memorize, memorize_naive):
        _, out = fn(mem, *args, chunk_size=4, state=state)
        assert (out.weights["weight"] == 0).all()  # tiny * 16 * 0.5**8 is subnormal: flushed
        _, kept = fn(mem, *args[:5], None, chunk_size=4, state=state)  # no decay: kept as it is
        assert (kept.weights["weight"] == tiny * 16).all()
