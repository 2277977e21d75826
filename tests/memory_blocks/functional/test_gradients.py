"""The outer loop: gradients through the inner loop are exact and reach every slow parameter."""

from __future__ import annotations

import pytest
import torch

from memory_blocks import memorize, memorize_naive

from .cases import make_inputs, make_memory


def _leaves(x):
    return [t.clone().requires_grad_() if t is not None else None for t in x.args()]


@pytest.mark.parametrize("kind", ["linear_bias", "mlp2", "gated", "module"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_parallel_gradients_equal_naive_gradients(kind: str, checkpoint: bool) -> None:
    mem = make_memory(kind, 4, 21)
    x = make_inputs(21, 2, 2, 11, 4, lr_scale=0.3, edges=False)
    args = _leaves(x)
    w = torch.randn(2, 2, 11, 4, dtype=torch.float64)

    def grads(fn, **kw):
        y, s = fn(mem, *args, chunk_size=3, **kw)
        loss = (y * w).sum() + sum((p * p).sum() for p in s.weights.values())
        inputs = [a for a in args if a is not None] + list(mem.parameters())
        return torch.autograd.grad(loss, inputs)

    ref = grads(memorize_naive)
    par = grads(memorize, block_chunks=2, checkpoint=checkpoint)
    for a, b in zip(par, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_every_input_and_initial_weight_gets_a_gradient() -> None:
    mem = make_memory("mlp2", 4, 22)
    args = _leaves(make_inputs(22, 1, 2, 9, 4, lr_scale=0.3, edges=False))
    y, _ = memorize(mem, *args, chunk_size=4)
    y.square().sum().backward()
    for t in args:
        assert t.grad is not None and t.grad.abs().sum() > 0
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradcheck_tiny() -> None:
    mem = make_memory("mlp1", 3, 23)
    x = make_inputs(23, 1, 1, 5, 3, lr_scale=0.3, edges=False)
    w0 = {n: p.detach().clone() for n, p in mem.named_parameters()}
    names = list(w0)

    def fn(q, k, v, lr, eta, alpha, *weights):
        state = mem.init_state(1, 1)
        state = type(state)({n: w.expand(1, 1, *w.shape) for n, w in zip(names, weights)}, state.momentum)
        y, s = memorize(mem, q, k, v, lr, eta, alpha, chunk_size=2, block_chunks=2, state=state)
        return y, s.weights[names[0]]

    inputs = tuple(t.clone().requires_grad_() for t in x.args()) + tuple(
        w.clone().requires_grad_() for w in w0.values()
    )
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_streamed_gradients_with_recomputation_equal_one_naive_call() -> None:
    """Two pieces split inside a chunk, each recomputed in the backward pass: the gradients
    through the carried state equal those of one naive call."""
    mem = make_memory("mlp2", 4, 24)
    x = make_inputs(24, 2, 1, 14, 4, lr_scale=0.3, edges=False)
    args = _leaves(x)
    inputs = args + list(mem.parameters())

    y_ref, _ = memorize_naive(mem, *args, chunk_size=3)
    ref = torch.autograd.grad(y_ref.square().sum(), inputs)

    first = [a[:, :, :5] for a in args]
    second = [a[:, :, 5:] for a in args]
    y1, state = memorize(mem, *first, chunk_size=3, block_chunks=2, checkpoint=True)
    y2, _ = memorize(mem, *second, chunk_size=3, block_chunks=2, checkpoint=True, state=state)
    got = torch.autograd.grad(y1.square().sum() + y2.square().sum(), inputs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
