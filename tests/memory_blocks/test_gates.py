"""Gates: ranges, initial values, per-tensor outputs."""

from __future__ import annotations

import pytest
import torch

from memory_blocks import ConstantGate, LearnedGate, NeuralMemory
from memory_blocks.gates import DECAY_INIT, decay_range


def test_learned_gate_starts_at_init_and_stays_in_range() -> None:
    gate = LearnedGate(8, 3, init=0.2, max_value=0.5)
    nn_weight = gate.proj.weight
    with torch.no_grad():
        nn_weight.zero_()
    x = torch.randn(2, 7, 8)
    g = gate(x)
    assert g.shape == (2, 3, 7)
    torch.testing.assert_close(g, torch.full_like(g, 0.2))
    with torch.no_grad():
        nn_weight.normal_(std=10.0)
    g = gate(x * 100)
    assert torch.all(g >= 0) and torch.all(g <= 0.5)


def test_per_tensor_gate_returns_one_value_per_name() -> None:
    gate = LearnedGate(8, 2, init=0.1, names=["w1", "w2"])
    out = gate(torch.randn(3, 5, 8))
    assert set(out) == {"w1", "w2"} and all(v.shape == (3, 2, 5) for v in out.values())
    assert not torch.allclose(out["w1"], out["w2"])  # separate projections


def test_constant_gate() -> None:
    g = ConstantGate(0.3, heads=2)(torch.randn(4, 6, 8))
    assert g.shape == (4, 2, 6) and torch.all(g == 0.3)
    assert not list(ConstantGate(0.3).parameters())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LearnedGate(8, 2, init=0.0), "init must lie strictly between"),
        (lambda: LearnedGate(8, 2, init=1.0), "init must lie strictly between"),
        (lambda: LearnedGate(8, 2, init=0.1, max_value=0.0), "max_value must be > 0"),
        (lambda: LearnedGate(0, 2, init=0.1), "dim and heads"),
        (lambda: ConstantGate(-0.1), "value must be >= 0"),
    ],
)
def test_bad_gate_arguments(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_decay_range_resolves_the_learned_forgetting_gate() -> None:
    assert decay_range(None, None) == (DECAY_INIT, 1.0)
    assert decay_range(None, 1e-3) == (1e-4, 1e-3)  # the start stays below any ceiling
    assert decay_range(0.002, 0.5) == (0.002, 0.5)


def test_neural_memory_decay_ceiling_bounds_alpha() -> None:
    layer = NeuralMemory(8, heads=2, chunk_size=2, decay_max=1e-3)
    gate = layer.decay_gate
    assert isinstance(gate, LearnedGate) and (gate.init, gate.max_value) == (1e-4, 1e-3)
    with torch.no_grad():
        gate.proj.weight.normal_(std=10.0)
        gate.proj.bias.fill_(30.0)
    alpha = gate(torch.randn(2, 9, 8) * 100)
    assert alpha.max() <= 1e-3 and alpha.max() > 0.9e-3  # pinned at the ceiling, not beyond
    assert NeuralMemory(8, heads=2).decay_gate.init == DECAY_INIT  # the default is unchanged
