"""The backward paths of the fast form: recomputed blocks, kept blocks, the weight tape and the
hand-written end-of-block update all give the naive loop's gradients (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import memorize, memorize_naive
from memory_blocks.functional.memorize_op.weight_tape import WeightTape
from memory_blocks.functional.memorize_op.weight_update import decayed_update

from .cases import make_inputs, make_memory


def _grads(fn, mem, args, **kw):
    y, s = fn(mem, *args, chunk_size=2, **kw)
    g = torch.Generator().manual_seed(5)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    loss = loss + sum((w * w).sum() for w in s.weights.values())
    loss = loss + sum((m * m).sum() for m in s.momentum.values())
    inputs = [a for a in args if a is not None] + list(mem.parameters())
    return torch.autograd.grad(loss, inputs)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["linear_bias", "mlp2", "mlp3_plain", "gated"]),
    seq=st.integers(9, 19),
    block_chunks=st.integers(1, 3),
    keep_every=st.integers(0, 3),
    momentum=st.booleans(),
    decay=st.booleans(),
)
def test_checkpointed_gradients_equal_naive_gradients(
    seed: int, kind: str, seq: int, block_chunks: int, keep_every: int, momentum: bool, decay: bool
) -> None:
    """Several blocks, some kept and some recomputed, gradients through y and the final state."""
    mem = make_memory(kind, 3, seed)
    x = make_inputs(seed, 2, 1, seq, 3, momentum=momentum, decay=decay, lr_scale=0.3, edges=False)
    args = [None if t is None else t.clone().requires_grad_() for t in x.args()]
    ref = _grads(memorize_naive, mem, args)
    got = _grads(memorize, mem, args, block_chunks=block_chunks, checkpoint=True, keep_every=keep_every)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("keep_every", [0, 1])
def test_a_retained_graph_can_be_differentiated_twice(keep_every: int) -> None:
    """A kept block's recorded graph is used once; the second backward recomputes the block."""
    mem = make_memory("mlp2", 3, 31)
    x = make_inputs(31, 1, 1, 8, 3, lr_scale=0.3, edges=False)
    args = [t.clone().requires_grad_() for t in x.args()]
    y, _ = memorize(mem, *args, chunk_size=2, block_chunks=2, checkpoint=True, keep_every=keep_every)
    first = torch.autograd.grad(y.square().sum(), args, retain_graph=True)
    second = torch.autograd.grad(y.square().sum(), args)
    ref_y, _ = memorize_naive(mem, *args, chunk_size=2)
    ref = torch.autograd.grad(ref_y.square().sum(), args)
    for a, b, c in zip(first, second, ref):
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(b, c, rtol=1e-8, atol=1e-9)


def test_weight_tape_gives_the_summed_gradient_of_every_read() -> None:
    """Reads of W (and the reads its recorded backward makes) on the tape: the tape's product plus
    autograd's other terms equal autograd's gradient of the same function."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 1, 5, 4, generator=g, dtype=torch.float64)
    hs = [torch.randn(2, 1, r, 4, generator=g, dtype=torch.float64) for r in (3, 1, 6)]

    def f(read, w_leaf):
        total = (w_leaf * w_leaf).sum()  # a use of W outside the reads
        for h in hs:
            h = h.clone().requires_grad_()
            z = torch.tanh(read(h, w_leaf))
            (gh,) = torch.autograd.grad(z.square().sum(), h, create_graph=True)  # reads g @ W
            total = total + (gh * gh).sum() + z.sum()
        return total

    ref_leaf = w.clone().requires_grad_()
    (ref,) = torch.autograd.grad(f(lambda h, m: h @ m.mT, ref_leaf), ref_leaf)

    leaf = w.clone().requires_grad_()
    tape = WeightTape([leaf])
    loss = f(tape.read, leaf)
    outs = tape.outputs()
    assert len(outs) == 6  # three reads and three reads of their backward passes
    got = torch.autograd.grad(loss, [leaf, *outs], allow_unused=True)
    summed = tape.gradients(list(got[1:]), {id(leaf): got[0]})[id(leaf)]
    tape.clear()
    torch.testing.assert_close(summed, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_beta", [False, True])
@pytest.mark.parametrize("with_momentum", [False, True])
def test_decayed_update_matches_its_formula_and_gradcheck(with_beta: bool, with_momentum: bool) -> None:
    g = torch.Generator().manual_seed(7)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    w0 = r(4, 3)
    w = w0.expand(2, 2, 4, 3)  # the initial weights arrive broadcast over batch and heads
    beta = r(2, 2) if with_beta else None
    s, gamma = (r(2, 2, 4, 3), r(2, 2)) if with_momentum else (None, None)
    delta, x, c = r(2, 2, 5, 4), r(2, 2, 5, 3), r(2, 2, 5)

    expected = w if beta is None else beta[..., None, None] * w
    if s is not None:
        expected = expected + gamma[..., None, None] * s
    expected = expected - torch.einsum("bhm,bhmo,bhmi->bhoi", c, delta, x)
    torch.testing.assert_close(decayed_update(w, beta, s, gamma, delta, x, c), expected)

    inputs = [t for t in (w0, beta, s, gamma, delta, x, c) if t is not None]

    def fn(*ts):
        it = iter(ts)
        ww = next(it).expand(2, 2, 4, 3)
        bb = next(it) if with_beta else None
        ss, gg = (next(it), next(it)) if with_momentum else (None, None)
        return decayed_update(ww, bb, ss, gg, next(it), next(it), next(it))

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("checkpoint,keep_every", [(True, 0), (True, 1), (False, 0)])
def test_second_derivatives_equal_naive(checkpoint: bool, keep_every: int) -> None:
    """A recorded backward pass (``create_graph``) through recomputed and kept blocks gives the
    naive loop's second derivatives."""
    mem = make_memory("mlp2", 3, 31)
    x = make_inputs(31, 1, 1, 8, 3, lr_scale=0.3, edges=False)
    args = [t.clone().requires_grad_() for t in x.args()]

    def grad_of_grad_norm(fn, **kw) -> tuple[torch.Tensor, ...]:
        y, _ = fn(mem, *args, chunk_size=2, **kw)
        (gk,) = torch.autograd.grad(y.square().sum(), [args[1]], create_graph=True)
        return torch.autograd.grad(gk.square().sum(), args)

    ref = grad_of_grad_norm(memorize_naive)
    got = grad_of_grad_norm(memorize, block_chunks=2, checkpoint=checkpoint, keep_every=keep_every)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
