"""The stability property at small sizes: NeuralMemory at its defaults stays finite, bounded and
alive for every memory model, chunk size, input kind and gate values at the ends of their ranges
(the full suite at preset sizes and 16K tokens: benchmarks/stability.py)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import ConstantGate, GatedMLPMemory, LinearMemory, MLPMemory, NeuralMemory

DIM, HEADS = 16, 2
D_HEAD = DIM // HEADS


def _memory(kind: str):  # noqa: ANN202
    return {
        "linear": lambda: LinearMemory(D_HEAD, D_HEAD),
        "mlp2": lambda: MLPMemory(D_HEAD, depth=2),
        "mlp4": lambda: MLPMemory(D_HEAD, depth=4),
        "gated": lambda: GatedMLPMemory(D_HEAD),
    }[kind]()


def _input(kind: str, seed: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(1, length, DIM, generator=g)
    if kind == "large":
        return 100 * torch.randn(1, length, DIM, generator=g)
    if kind == "zeros":
        return torch.zeros(1, length, DIM)
    if kind == "repeat":
        return torch.randn(1, 1, DIM, generator=g).expand(1, length, DIM).contiguous()
    return torch.randn(1, 16, DIM, generator=g).repeat(1, length // 16, 1)  # periodic


@settings(max_examples=8, deadline=None)
@given(
    kind=st.sampled_from(["linear", "mlp2", "mlp4", "gated"]),
    chunk=st.sampled_from([1, 4, 16, 64]),
    inputs=st.sampled_from(["random", "repeat", "periodic", "zeros", "large"]),
    # None: the learned gates as initialised; else (theta, eta, alpha) as fractions of their range
    pinned=st.one_of(st.none(), st.tuples(*[st.sampled_from([0.0, 0.001, 0.999])] * 3)),
    seed=st.integers(0, 1000),
)
def test_default_layer_stays_finite_bounded_and_alive(
    kind: str, chunk: int, inputs: str, pinned: tuple[float, float, float] | None, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = NeuralMemory(DIM, HEADS, chunk_size=chunk, memory=_memory(kind))
    if pinned is not None:
        theta, eta, alpha = pinned
        layer.lr_gate = ConstantGate(theta * layer.lr_gate.max_value, HEADS)
        layer.momentum_gate = ConstantGate(eta, HEADS)
        layer.decay_gate = ConstantGate(alpha, HEADS)
    length = 512 if chunk > 1 else 128
    state = None
    with torch.no_grad():
        for piece in range(2):  # two calls, carrying the state
            y, state = layer(_input(inputs, seed + piece, length // 2), state)
            assert torch.isfinite(y).all()
    tiny = torch.finfo(torch.float32).tiny
    for name, w in state.memory.weights.items():
        assert torch.isfinite(w).all(), name
        assert w.abs().max() < 1e4, (name, float(w.abs().max()))
        assert not ((w != 0) & (w.abs() < tiny)).any(), f"subnormal entries in {name}"
        start = float(layer.memory.initial_weights()[name].detach().abs().max())
        if start > 0:
            assert w.abs().max() > 1e-6 * start, f"{name} collapsed to {float(w.abs().max()):.3g}"
