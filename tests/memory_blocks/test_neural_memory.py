"""NeuralMemory: the layer composes projections, gates and memorize, streams exactly, trains."""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import (
    ConstantGate,
    GatedMLPMemory,
    GradientDescent,
    Huber,
    LearnedGate,
    LinearMemory,
    MLPMemory,
    ModuleMemory,
    NeuralMemory,
)


def _layer(memory: str = "mlp", **kw) -> NeuralMemory:
    torch.manual_seed(0)
    mems = {
        "mlp": lambda: MLPMemory(8, depth=2, expansion=2),
        "linear": lambda: LinearMemory(8, 8, init_std=0.1),
        "gated": lambda: GatedMLPMemory(8),
        "module": lambda: ModuleMemory(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()), 8, 8),
    }
    kw.setdefault("heads", 2)
    return NeuralMemory(16, chunk_size=3, memory=mems[memory](), dim_head=8, **kw).double()


def test_the_issue_example_is_a_valid_call() -> None:
    layer = NeuralMemory(dim=256, heads=1, chunk_size=16, memory=MLPMemory(256, depth=2, expansion=4))
    y, state = layer(torch.randn(2, 20, 256))
    assert y.shape == (2, 20, 256)
    assert state.memory.offset == 4 and state.memory.weights["w1"].shape == (2, 1, 1024, 256)


@pytest.mark.parametrize("memory", ["mlp", "linear", "gated", "module"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), seq=st.integers(2, 17), cuts=st.lists(st.integers(1, 16), max_size=4))
def test_streaming_pieces_equal_one_call(memory: str, seed: int, seq: int, cuts: list[int]) -> None:
    layer = _layer(memory)
    x = torch.randn(2, seq, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y_full, _ = layer(x)
    bounds = sorted({0, seq, *[c for c in cuts if c < seq]})
    state, ys = None, []
    for s, e in zip(bounds, bounds[1:]):
        y, state = layer(x[:, s:e], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=1e-9, atol=1e-10)


def test_token_by_token_and_causality(device: torch.device) -> None:
    layer = _layer().to(device)
    x = torch.randn(1, 11, 16, dtype=torch.float64, device=device)
    y_full, _ = layer(x)
    state, ys = None, []
    for t in range(11):
        y, state = layer(x[:, t : t + 1], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=1e-9, atol=1e-10)
    x2 = x.clone()
    x2[:, 6:] = torch.randn_like(x2[:, 6:])
    y2, _ = layer(x2)
    torch.testing.assert_close(y2[:, :6], y_full[:, :6], rtol=0, atol=1e-12)
    assert not torch.allclose(y2[:, 6:], y_full[:, 6:])


@pytest.mark.parametrize("memory", ["mlp", "linear", "gated", "module"])
@pytest.mark.parametrize("per_tensor_lr", [False, True])
def test_every_slow_parameter_gets_a_gradient(memory: str, per_tensor_lr: bool) -> None:
    layer = _layer(memory, per_tensor_lr=per_tensor_lr)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y, _ = layer(x)
    y.square().sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_retrieve_writes_nothing() -> None:
    layer = _layer()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    _, state = layer(x)
    before = {n: w.clone() for n, w in state.memory.weights.items()}
    r1 = layer.retrieve(x[:, :3], state)
    r2 = layer.retrieve(x[:, :3], state)
    torch.testing.assert_close(r1, r2)
    for n, w in state.memory.weights.items():
        assert torch.equal(w, before[n])


def test_component_swaps_are_one_argument() -> None:
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    variants = [
        _layer(optimizer="gd"),
        _layer(optimizer=GradientDescent(), decay_gate=None),
        _layer(objective=Huber(0.5)),
        _layer(lr_gate=0.05, momentum_gate=ConstantGate(0.5, heads=2), decay_gate=0.0),
        _layer(lr_gate=LearnedGate(16, 2, init=0.2, max_value=0.5)),
        _layer(conv_kernel=None, qkv_silu=False, qk_norm=False, output_norm=False, output_gate=False),
        _layer(checkpoint=True, block_chunks=1),
    ]
    outs = [m(x)[0] for m in variants]
    assert all(o.shape == (1, 9, 16) for o in outs)
    assert isinstance(variants[0].optimizer, GradientDescent) and variants[0].momentum_gate is None
    assert variants[1].decay_gate is None


def test_knobs_do_not_change_results() -> None:
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    base = _layer()(x)[0]
    for kw in (dict(block_chunks=1), dict(block_chunks=5), dict(checkpoint=False)):
        torch.testing.assert_close(_layer(**kw)(x)[0], base, rtol=1e-10, atol=1e-12)


forward = inspect.unwrap(NeuralMemory.forward)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=10, heads=3), "heads=3 does not divide dim=10"),
        (dict(dim=8, heads=0), "heads must be >= 1"),
        (dict(dim=8, chunk_size=0), "chunk_size"),
        (dict(dim=8, memory=MLPMemory(4)), "dim_head=8"),
        (dict(dim=8, memory=torch.nn.Linear(8, 8)), "ModuleMemory"),
        (dict(dim=8, optimizer="adam"), "unknown optimizer 'adam'"),
        (dict(dim=8, optimizer="gd", momentum_gate=0.5), "uses no momentum"),
        (dict(dim=8, lr_gate=None), "lr_gate cannot be None"),
        (dict(dim=8, decay_gate="sometimes"), "decay_gate must be"),
        (dict(dim=8, heads=2, lr_gate=ConstantGate(0.1, heads=1)), "lr_gate has 1 heads"),
    ],
)
def test_bad_construction(kwargs, message) -> None:
    layer = NeuralMemory.__new__(NeuralMemory)
    with pytest.raises(ValueError, match=message):  # unwrapped: the runtime type checker is off
        inspect.unwrap(NeuralMemory.__init__)(layer, **kwargs)


def test_bad_input() -> None:
    layer = _layer()
    with pytest.raises(ValueError, match=r"expected x of shape \(batch, seq, 16\)"):
        forward(layer, torch.randn(2, 5, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty"):
        forward(layer, torch.randn(2, 0, 16, dtype=torch.float64))
    _, state = layer(torch.randn(2, 5, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch 2"):
        forward(layer, torch.randn(3, 5, 16, dtype=torch.float64), state)
