"""Memory models: shapes, fast-weight names, W_0, the generic and factored evaluations agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memory_blocks import GatedMLPMemory, LinearMemory, MLPMemory, ModuleMemory
from memory_blocks.functional import DirectOps


def test_linear_memory_follows_nn_linear() -> None:
    mem = LinearMemory(3, 5, bias=True, init_std=1.0)
    assert mem.weight.shape == (5, 3) and mem.bias.shape == (5,)
    x = torch.randn(4, 3)
    torch.testing.assert_close(mem(x), nn.functional.linear(x, mem.weight, mem.bias))
    assert torch.all(LinearMemory(3, 5).weight == 0)  # starts empty by default


def test_mlp_memory_is_the_residual_form() -> None:
    mem = MLPMemory(6, depth=2, expansion=2, activation="silu")
    assert set(mem.initial_weights()) == {"w1", "w2", "norm_weight"}
    assert mem.w1.shape == (12, 6) and mem.w2.shape == (6, 12)
    x = torch.randn(5, 6)
    h = nn.functional.silu(x @ mem.w1.T) @ mem.w2.T
    torch.testing.assert_close(mem(x), x + nn.functional.layer_norm(h, (6,)) * mem.norm_weight)
    plain = MLPMemory(6, depth=3, residual_norm=False, activation="relu")
    assert set(plain.initial_weights()) == {"w1", "w2", "w3"}
    torch.testing.assert_close(
        plain(x), torch.relu(torch.relu(x @ plain.w1.T) @ plain.w2.T) @ plain.w3.T
    )


def test_gated_mlp_memory() -> None:
    mem = GatedMLPMemory(4, expansion=2, residual_norm=False)
    x = torch.randn(3, 4)
    h = nn.functional.silu(x @ mem.w_gate.T) * (x @ mem.w_up.T)
    torch.testing.assert_close(mem(x), h @ mem.w_down.T)


@pytest.mark.parametrize("mem", [MLPMemory(4, depth=2), GatedMLPMemory(4), LinearMemory(4, 4, bias=True, init_std=1.0)])
def test_batched_weights_apply_per_batch_and_head(mem) -> None:
    state = mem.init_state(2, 3)
    weights = {n: w + 0.1 * torch.randn(w.shape) for n, w in state.weights.items()}
    x = torch.randn(2, 3, 5, 4)
    y = mem.forward_with(weights, x)
    for b in range(2):
        for h in range(3):
            single = {n: w[b, h] for n, w in weights.items()}
            torch.testing.assert_close(y[b, h], mem.forward_single(single, x[b, h]))


def test_module_memory_matches_the_module() -> None:
    module = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
    mem = ModuleMemory(module, 4, 3)
    x = torch.randn(2, 2, 5, 4)
    state = mem.init_state(2, 2)
    torch.testing.assert_close(mem.forward_with(state.weights, x), module(x))
    assert set(mem.initial_weights()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_init_state_shapes_and_zero_momentum() -> None:
    mem = MLPMemory(4, depth=2, expansion=3)
    s = mem.init_state(2, 5)
    assert s.weights["w1"].shape == (2, 5, 12, 4) and s.momentum["w2"].shape == (2, 5, 4, 12)
    assert all(torch.all(m == 0) for m in s.momentum.values())
    assert s.offset == 0 and s.chunk_weights is None


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MLPMemory(0), "dim must be >= 1"),
        (lambda: MLPMemory(4, depth=0), "depth must be >= 1"),
        (lambda: MLPMemory(4, activation="swish2"), "unknown activation 'swish2'"),
        (lambda: LinearMemory(0, 3), "dim_in and dim_out"),
        (lambda: GatedMLPMemory(4, expansion=0), "expansion must be > 0"),
        (lambda: ModuleMemory(nn.ReLU(), 4, 4), "no parameters"),
    ],
)
def test_bad_memory_arguments(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_fast_weight_used_twice_is_refused_on_the_factored_path() -> None:
    class Tied(LinearMemory):
        def forward_ops(self, ops, x):
            return ops.linear("weight", ops.linear("weight", x))

    from memory_blocks.functional import KeyPathOps

    mem = Tied(3, 3, init_std=1.0)
    ops = KeyPathOps(DirectOps(mem.init_state(1, 1).weights), 2)
    with pytest.raises(ValueError, match="twice"):
        mem.forward_ops(ops, torch.randn(1, 1, 2, 3))
