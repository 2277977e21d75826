"""Bad input raises ValueError naming the problem."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from memory_blocks import MemoryState
from memory_blocks import memorize as checked_memorize
from memory_blocks import memorize_naive as checked_naive
from memory_blocks import retrieve as checked_retrieve

from .cases import make_inputs, make_memory

# The test run wraps public functions in jaxtyping's runtime checker, which rejects bad shapes
# before the function's own validation runs; these tests exercise that validation (what users
# get without the checker), so they call the functions unwrapped.
memorize = inspect.unwrap(checked_memorize)
memorize_naive = inspect.unwrap(checked_naive)
retrieve = inspect.unwrap(checked_retrieve)


@pytest.fixture
def setup():
    mem = make_memory("mlp2", 4, 0)
    x = make_inputs(0, 2, 3, 7, 4)
    return mem, x


@pytest.mark.parametrize("fn", [memorize, memorize_naive])
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: dict(q=x.q[0]), "q must have shape"),
        (lambda x: dict(k=x.k[:, :2]), "q and k must have the same shape"),
        (lambda x: dict(q=x.q[:, :2], k=x.k[:, :2]), "v must share"),
        (lambda x: dict(q=x.q[..., :3], k=x.k[..., :3]), "dim_in = 4"),
        (lambda x: dict(v=x.v[..., :3]), "dim_out = 4"),
        (lambda x: dict(lr=x.lr[:, :, :5]), "lr must have shape"),
        (lambda x: dict(momentum=x.momentum[:, :1]), "momentum must have shape"),
        (lambda x: dict(decay=x.decay[..., None]), "decay must have shape"),
        (lambda x: dict(lr=x.lr.float()), "lr has dtype"),
        (lambda x: dict(lr={"w1": x.lr}), "must name exactly the memory's fast weights"),
        (lambda x: dict(q=x.q[:, :, :0], k=x.k[:, :, :0], v=x.v[:, :, :0], lr=x.lr[:, :, :0],
                        momentum=x.momentum[:, :, :0], decay=x.decay[:, :, :0]), "empty"),
    ],
)
def test_bad_arguments(setup, fn, change, message) -> None:
    mem, x = setup
    kw = dict(q=x.q, k=x.k, v=x.v, lr=x.lr, momentum=x.momentum, decay=x.decay)
    kw.update(change(x))
    with pytest.raises(ValueError, match=message):
        fn(mem, kw["q"], kw["k"], kw["v"], kw["lr"], kw["momentum"], kw["decay"], chunk_size=2)


@pytest.mark.parametrize("fn", [memorize, memorize_naive])
@pytest.mark.parametrize("chunk", [0, -1, 1.5, True])
def test_bad_chunk_size(setup, fn, chunk) -> None:
    mem, x = setup
    with pytest.raises(ValueError, match="chunk_size"):
        fn(mem, *x.args(), chunk_size=chunk)


def test_bad_block_chunks(setup) -> None:
    mem, x = setup
    with pytest.raises(ValueError, match="block_chunks"):
        memorize(mem, *x.args(), chunk_size=2, block_chunks=0)


def test_state_mismatches(setup) -> None:
    mem, x = setup
    with pytest.raises(ValueError, match="state.weights"):
        memorize(mem, *x.args(), chunk_size=2, state=mem.init_state(1, 3))
    other = make_memory("linear", 4, 0)
    with pytest.raises(ValueError, match="fast weights"):
        memorize(mem, *x.args(), chunk_size=2, state=other.init_state(2, 3))
    _, mid = memorize(mem, *x.args(), chunk_size=4)
    assert mid.offset == 3
    with pytest.raises(ValueError, match="chunk_size = 2"):
        memorize(mem, *x.args(), chunk_size=2, state=mid)
    with pytest.raises(ValueError, match="retrieve: q must have shape"):
        retrieve(mem, mid, x.q[0])
    with pytest.raises(ValueError, match="state.weights"):
        retrieve(mem, mid, x.q[:1])


def test_state_invariants() -> None:
    w = {"a": torch.zeros(1, 1, 2)}
    with pytest.raises(ValueError, match="same tensors"):
        MemoryState(w, {"b": torch.zeros(1, 1, 2)})
    with pytest.raises(ValueError, match="chunk_weights must be given exactly when offset > 0"):
        MemoryState(w, w, None, 3)
    with pytest.raises(ValueError, match="momentum"):
        MemoryState(w, {"a": torch.zeros(1, 1, 3)})
    with pytest.raises(ValueError, match="leading"):
        MemoryState({"a": torch.zeros(2)}, {"a": torch.zeros(2)})
    s = MemoryState(w, w)
    assert dataclasses.replace(s, offset=0).offset == 0


def test_inference_mode_is_refused_with_a_clear_message(setup) -> None:
    mem, x = setup
    with torch.inference_mode(), pytest.raises(RuntimeError, match="use torch.no_grad"):
        memorize(mem, *x.args(), chunk_size=2)
