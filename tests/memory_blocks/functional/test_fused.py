"""The hand-written block (functional/memorize_op/fused_block.py) against the general autograd path, float64.

The general path is the oracle here (itself tested against the naive loop in test_memorize
and test_gradients): the same squared error passed as a plain lambda is not recognised as the
squared error, so ``memorize`` takes the general path for it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import GatedMLPMemory, LinearMemory, MLPMemory, SquaredError, memorize, memorize_naive
from memory_blocks.functional import huber, squared_error
from memory_blocks.functional.memorize_op.fused_block import ACTIVATIONS
from memory_blocks.functional.losses import is_squared_error
from memory_blocks.objectives import Huber

from .cases import assert_close, assert_states_close, make_inputs, make_memory

FUSED_KINDS = ["linear", "mlp1", "mlp2", "mlp3_plain", "mlp2_silu", "mlp2_relu", "mlp2_identity"]


def _memory(kind: str, dim: int, seed: int) -> torch.nn.Module:
    if kind.startswith("mlp2_"):
        torch.manual_seed(seed)
        mem = MLPMemory(dim, depth=2, expansion=2.0, activation=kind.split("_")[1])
        with torch.no_grad():
            for p in mem.parameters():
                p.add_(0.1 * torch.randn(p.shape))
        return mem.double()
    return make_memory(kind, dim, seed)


def _general(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return squared_error(pred, target)


def _run(mem, args, objective, **kw):
    """Outputs, state and the gradients of a loss touching the outputs, weights and momentum."""
    y, s = memorize(mem, *args, objective=objective, **kw)
    g = torch.Generator().manual_seed(5)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for name in s.weights:
        w, m = s.weights[name], s.momentum[name].expand_as(s.weights[name])
        loss = loss + (w * torch.randn(w.shape, generator=g, dtype=w.dtype)).sum()
        loss = loss + (m * torch.randn(m.shape, generator=g, dtype=m.dtype)).sum()
    leaves = [a for a in args if isinstance(a, torch.Tensor)]
    leaves += [t for a in args if isinstance(a, dict) for t in a.values()]
    leaves += list(mem.parameters())
    return y, s, torch.autograd.grad(loss, leaves, allow_unused=True)


@pytest.mark.parametrize("kind", FUSED_KINDS)
@settings(max_examples=5, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    seq=st.integers(1, 23),
    chunk=st.integers(1, 5),
    block_chunks=st.integers(1, 4),
    momentum=st.booleans(),
    decay=st.booleans(),
    per_tensor=st.booleans(),
    checkpoint=st.booleans(),
)
def test_fused_equals_general_path(
    kind: str, seed: int, batch: int, heads: int, seq: int, chunk: int, block_chunks: int,
    momentum: bool, decay: bool, per_tensor: bool, checkpoint: bool,
) -> None:
    """Outputs, final state and the gradients of every input, gate and W_0 agree."""
    mem = _memory(kind, 4, seed)
    x = make_inputs(seed, batch, heads, seq, 4, momentum=momentum, decay=decay, edges=True, lr_scale=0.3)
    lr = x.lr
    if per_tensor:
        lr = {n: x.lr * (0.5 + i) for i, n in enumerate(mem.initial_weights())}
    base = [x.q, x.k, x.v, lr, x.momentum, x.decay]

    def leaves():
        out = []
        for a in base:
            if isinstance(a, dict):
                out.append({n: t.clone().requires_grad_() for n, t in a.items()})
            else:
                out.append(None if a is None else a.clone().requires_grad_())
        return out

    kw = dict(chunk_size=chunk, block_chunks=block_chunks, checkpoint=checkpoint, keep_every=2)
    y1, s1, g1 = _run(mem, leaves(), squared_error, **kw)
    y2, s2, g2 = _run(mem, leaves(), _general, **kw)
    assert_close(y1, y2)
    assert_states_close(s1, s2)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, rtol=1e-7)


@pytest.mark.parametrize("kind", ["mlp2", "linear", "mlp3_plain"])
def test_fused_streaming_equals_naive(kind: str) -> None:
    """Pieces that start and end mid-chunk (the pieces' partial chunks take the general path,
    their whole blocks the fused one) equal one naive call."""
    mem = _memory(kind, 4, 3)
    x = make_inputs(3, 2, 1, 30, 4)
    y_ref, s_ref = memorize_naive(mem, *x.args(), chunk_size=4)
    ys, state = [], None
    for s, e in [(0, 6), (6, 21), (21, 30)]:
        y, state = memorize(mem, *x.cut(s, e).args(), chunk_size=4, block_chunks=2, state=state)
        ys.append(y)
    assert_close(torch.cat(ys, dim=2), y_ref)
    assert_states_close(state, s_ref)


def _node_names(t: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize(
    "memory,objective,fused",
    [
        (MLPMemory(4, depth=2, expansion=2.0), squared_error, True),
        (MLPMemory(4, depth=2, expansion=2.0), SquaredError(), True),
        (LinearMemory(4, 4), SquaredError(), True),
        (MLPMemory(4, depth=2, expansion=2.0), Huber(), False),
        (MLPMemory(4, depth=2, expansion=2.0), _general, False),
        (LinearMemory(4, 4, bias=True), squared_error, False),
        (GatedMLPMemory(4), squared_error, False),
    ],
)
def test_which_path_runs(memory, objective, fused: bool) -> None:
    """The hand-written block runs exactly for MLP-family memories with the squared error."""
    x = make_inputs(0, 1, 1, 8, 4)
    args = [t.float().requires_grad_() if t is not None else None for t in x.args()]
    y, _ = memorize(memory, *args, chunk_size=2, objective=objective)
    assert ("_FusedBackward" in _node_names(y)) == fused


def test_fused_spec_declines_subclasses_that_change_the_forward() -> None:
    class Doubled(MLPMemory):
        def forward_ops(self, ops, x):
            return 2 * super().forward_ops(ops, x)

    assert MLPMemory(4).fused_spec() is not None
    assert Doubled(4).fused_spec() is None
    assert GatedMLPMemory(4).fused_spec() is None
    assert LinearMemory(4, 4, bias=True).fused_spec() is None


def test_is_squared_error() -> None:
    assert is_squared_error(squared_error) and is_squared_error(SquaredError())
    assert not is_squared_error(Huber()) and not is_squared_error(huber) and not is_squared_error(_general)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_autograd(name: str) -> None:
    act = ACTIVATIONS[name]
    x = torch.linspace(-4, 4, 101, dtype=torch.float64).requires_grad_()
    g = torch.cos(torch.arange(101, dtype=torch.float64))
    (d1,) = torch.autograd.grad(act.forward(x), x, g, create_graph=True)
    assert_close(act.backward(g, x.detach()), d1.detach())
    d2 = torch.autograd.grad(d1, x, torch.ones_like(d1), allow_unused=True)[0] if d1.requires_grad else None
    expected = torch.zeros_like(x) if d2 is None else d2 / g
    if act.second is None:
        assert_close(expected, torch.zeros_like(expected))
    else:
        assert_close(act.second(x.detach()), expected)


def test_fused_block_gradcheck() -> None:
    """Finite differences through the hand-written backward (gates, W_0, q, k, v)."""
    mem = make_memory("mlp2", 3, 9)
    x = make_inputs(9, 1, 1, 6, 3, lr_scale=0.3, edges=False)
    names = list(mem.initial_weights())

    def fn(q, k, v, lr, eta, alpha, *weights):
        state = mem.init_state(1, 1)
        state = type(state)({n: w.expand(1, 1, *w.shape) for n, w in zip(names, weights)}, state.momentum)
        y, s = memorize(mem, q, k, v, lr, eta, alpha, chunk_size=2, block_chunks=3, state=state)
        return y, s.weights["w2"], s.momentum["w1"]

    inputs = tuple(t.clone().requires_grad_() for t in x.args()) + tuple(
        p.detach().clone().requires_grad_() for p in mem.initial_weights().values()
    )
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)
