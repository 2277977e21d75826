"""Step scales and the layer's stabilising rules: each against an independent formula, the
layer against the token loop with the same rules, and the literal update one setting away."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import (
    GatedMLPMemory,
    LinearMemory,
    LiteralStep,
    MLPMemory,
    ModuleMemory,
    NeuralMemory,
    NormalizedStep,
    memorize_naive,
)


def _gates(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), chunk=st.integers(1, 64), chunk_mean=st.booleans(),
       damp=st.booleans(), curvature=st.booleans())
def test_normalized_step_is_theta_times_one_minus_eta_over_chunk_and_curvature(
    seed: int, chunk: int, chunk_mean: bool, damp: bool, curvature: bool
) -> None:
    theta, eta = _gates(seed, (2, 3, 5))
    memory = MLPMemory(4, depth=2, expansion=2.0)
    rule = NormalizedStep(chunk_mean=chunk_mean, damp_momentum=damp, curvature=curvature)
    got = rule(theta, eta, chunk_size=chunk, memory=memory)
    expected = theta.clone()
    for i in range(theta.shape[-1]):  # one token at a time, written out
        t = expected[..., i]
        if chunk_mean:
            t = t / chunk
        if curvature:
            t = t / (2 * memory.hidden)
        if damp:
            t = t * (1 - eta[..., i])
        expected[..., i] = t
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    # per-tensor learning rates are scaled alike; without momentum nothing is damped
    per_tensor = rule({"w1": theta, "w2": 2 * theta}, None, chunk_size=chunk, memory=memory)
    plain = NormalizedStep(chunk_mean=chunk_mean, damp_momentum=False, curvature=curvature)
    torch.testing.assert_close(per_tensor["w2"], 2 * plain(theta, None, chunk_size=chunk, memory=memory))
    assert LiteralStep()(theta, eta, chunk_size=chunk, memory=memory) is theta


def test_curvature_estimates_bound_the_measured_hessian() -> None:
    """lambda_0 against power iteration on one token's inner loss at W_0 (unit keys): the
    estimate is within a factor 4 of the mean top eigenvalue, for every built-in model."""
    torch.manual_seed(0)
    cases = [LinearMemory(8, 8), LinearMemory(8, 8, bias=True), MLPMemory(8, depth=2), MLPMemory(8, depth=1),
             MLPMemory(8, depth=2, residual_norm=False), GatedMLPMemory(8)]
    for memory in cases:
        w0 = {n: p.detach().double() for n, p in memory.initial_weights().items()}
        memory = memory.double()
        tops = []
        for _ in range(8):
            k = torch.nn.functional.normalize(torch.randn(1, 8, dtype=torch.float64), dim=-1)
            v = torch.randn(1, 8, dtype=torch.float64)

            def loss(w: dict[str, torch.Tensor], k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
                return (memory.forward_single(w, k) - v).square().sum()

            x = {n: torch.randn_like(t) for n, t in w0.items()}
            for _ in range(40):
                norm = torch.sqrt(sum((t * t).sum() for t in x.values()))
                x = {n: t / norm for n, t in x.items()}
                _, hx = torch.func.jvp(torch.func.grad(loss), (w0,), (x,))
                top = float(sum((hx[n] * x[n]).sum() for n in x))
                x = hx
            tops.append(abs(top))
        measured = sum(tops) / len(tops)
        assert memory.curvature() / 4 <= measured <= 4 * memory.curvature(), (type(memory).__name__, measured)


def test_module_memory_takes_its_curvature_and_refuses_a_bad_one() -> None:
    mem = ModuleMemory(torch.nn.Linear(3, 3), 3, 3, curvature=7.0)
    assert mem.curvature() == 7.0
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="curvature must be a finite number > 0"):
            ModuleMemory(torch.nn.Linear(3, 3), 3, 3, curvature=bad)


@pytest.mark.parametrize("rules", [{}, {"step_scale": "literal", "forget_target": "zero"},
                                   {"step_scale": NormalizedStep(curvature=False), "forget_target": "zero"}])
def test_layer_equals_the_token_loop_with_its_rules(rules: dict) -> None:
    """The layer's output is out(memorize_naive(q, k, v, step_scale(theta, eta), eta, alpha,
    forget_target)): the rules are applied the same way token by token."""
    torch.manual_seed(0)
    layer = NeuralMemory(8, 2, chunk_size=3, memory=MLPMemory(4, depth=2, expansion=2.0), **rules).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    y, state = layer(x)
    q, k, v = layer.project(x)
    eta = layer.momentum_gate(x)
    theta = layer.step_scale(layer.lr_gate(x), eta, chunk_size=3, memory=layer.memory)
    y_mem, naive_state = memorize_naive(layer.memory, q, k, v, theta, eta, layer.decay_gate(x), chunk_size=3,
                                        forget_target=layer.forget_target)
    torch.testing.assert_close(y, layer._output(x, y_mem), rtol=1e-10, atol=1e-10)
    for n, w in naive_state.weights.items():
        torch.testing.assert_close(state.memory.weights[n], w, rtol=1e-10, atol=1e-10)


def test_defaults_are_the_stable_rules_and_the_literal_update_is_one_setting_away() -> None:
    layer = NeuralMemory(16)
    assert isinstance(layer.step_scale, NormalizedStep) and layer.forget_target == "init"
    assert (layer.lr_gate.init, layer.lr_gate.max_value) == (NormalizedStep.lr_init, NormalizedStep.lr_max)
    literal = NeuralMemory(16, step_scale="literal", forget_target="zero")
    assert isinstance(literal.step_scale, LiteralStep)
    assert (literal.lr_gate.init, literal.lr_gate.max_value) == (0.01, 0.1)
    with pytest.raises(ValueError, match="unknown step_scale 'mean'"):
        NeuralMemory(16, step_scale="mean")
    with pytest.raises(ValueError, match="forget_target must be one of"):
        NeuralMemory(16, forget_target="W0")
