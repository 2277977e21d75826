"""The design-space components (retention, Muon, the Omega rule, feature maps) in a
``NeuralMemory``: the layer equals the token loop with its rules applied by hand, streams, trains
every slow parameter, and refuses bad components with errors that name them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import (
    ElasticNet,
    KLRetention,
    LqNormalization,
    MLPMemory,
    Muon,
    NeuralMemory,
    PolynomialFeatures,
    memorize_naive,
)

LAYERS = {
    "lq": dict(retention="lq", objective="lp"),
    "kl": dict(retention=KLRetention()),
    "kl_chunk": dict(retention=KLRetention(per_chunk=True)),
    "elastic": dict(retention=ElasticNet(threshold=0.01)),
    "muon": dict(optimizer="muon"),
    "omega": dict(omega_window=3),
    "atlas": dict(optimizer=Muon(steps=3), omega_window=2, feature_map=PolynomialFeatures(2)),
    "poly": dict(feature_map="polynomial"),
}


def _layer(name: str, chunk: int = 4) -> NeuralMemory:
    torch.manual_seed(0)
    return NeuralMemory(8, heads=2, chunk_size=chunk, memory=MLPMemory(4, depth=2), **LAYERS[name]).double()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_equals_the_token_loop_with_its_rules(name: str) -> None:
    layer = _layer(name)
    # A per-chunk readout reads phi(A) exactly only at a chunk's end: end the call on one.
    length = 12 if layer.retention.per_chunk else 11
    x = torch.randn(1, length, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q, k, v = layer.project(x)
    eta = layer.momentum_gate(x)
    theta = layer.step_scale(layer.lr_gate(x), eta, chunk_size=4, memory=layer.memory)
    gamma = None if layer.omega_gate is None else layer.omega_gate(x) / layer.omega_window
    y_naive, naive = memorize_naive(
        layer.memory, q, k, v, theta, eta, layer.decay_gate(x), chunk_size=4, forget_target="init",
        objective=layer.objective,
        retention=layer.retention, omega_window=layer.omega_window, omega_weights=gamma,
        newton_schulz_steps=layer.optimizer.newton_schulz_steps,
    )
    out, state = layer(x)
    for n, w in naive.weights.items():
        torch.testing.assert_close(state.memory.weights[n], w, rtol=1e-9, atol=1e-10)
    # The retrieval of the last token reads what the memory holds after it (phi(A) for a retention).
    last = layer.retrieve(x, state)[:, -1]
    torch.testing.assert_close(last, out[:, -1], rtol=1e-9, atol=1e-10)
    assert torch.isfinite(y_naive).all()


@pytest.mark.parametrize("name", sorted(LAYERS))
@settings(max_examples=3, deadline=None)
@given(cut=st.integers(1, 12), seed=st.integers(0, 1000))
def test_layer_streams_in_pieces(name: str, cut: int, seed: int) -> None:
    layer = _layer(name, chunk=3)
    x = torch.randn(2, 13, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y_full, _ = layer(x)
        y1, state = layer(x[:, :cut])
        y2, _ = layer(x[:, cut:], state)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_slow_parameter_gets_a_gradient(name: str) -> None:
    layer = _layer(name)
    x = torch.randn(2, 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, _ = layer(x)
    y.square().sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    if layer.omega_gate is not None:
        assert any(p.grad.abs().sum() > 0 for p in layer.omega_gate.parameters())


def test_polynomial_features_are_the_power_series() -> None:
    fm = PolynomialFeatures(3).double()
    with torch.no_grad():
        fm.coefficients.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(fm(x), 0.5 * x - x**2 + 2 * x**3)
    assert torch.allclose(PolynomialFeatures(2).coefficients, torch.tensor([1.0, 0.5]))
    assert torch.equal(PolynomialFeatures(1)(x.float()), x.float())


def test_feature_map_keys_stay_unit_norm() -> None:
    layer = _layer("poly")
    q, k, _ = layer.project(torch.randn(1, 6, 8, dtype=torch.float64))
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(k.shape[:-1], dtype=torch.float64))
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(q.shape[:-1], dtype=torch.float64))


def test_omega_window_one_builds_no_gate_and_default_is_unchanged() -> None:
    torch.manual_seed(0)
    a = NeuralMemory(8, heads=2, chunk_size=4)
    torch.manual_seed(0)
    b = NeuralMemory(8, heads=2, chunk_size=4, omega_window=1, retention="l2", feature_map="identity")
    assert a.omega_gate is None and b.omega_gate is None
    x = torch.randn(1, 9, 8)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(retention="nope"), ValueError, "unknown retention"),
        (dict(retention=3), TypeError, "retention"),
        (dict(feature_map="cubic"), ValueError, "unknown feature_map"),
        (dict(feature_map=torch.nn.Identity()), TypeError, "feature_map"),
        (dict(optimizer="adam"), ValueError, "unknown optimizer"),
        (dict(omega_window=0), ValueError, "omega_window"),
        (dict(omega_window=2.0), (TypeError, ValueError), "omega_window"),
    ],
)
def test_layer_refuses_bad_components(kwargs: dict, error: type | tuple[type, ...], message: str) -> None:
    # (Under CI's runtime type checking an argument of the wrong kind is answered by the
    # checker first, with a TypeError naming the parameter.)
    with pytest.raises(error, match=message):
        NeuralMemory(8, heads=2, **kwargs)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: LqNormalization(q=1.5), ValueError, "q must be finite and >= 2"),
        (lambda: LqNormalization(q=math.inf), ValueError, "q must be finite"),
        (lambda: LqNormalization(eps=0.0), ValueError, "eps"),
        (lambda: LqNormalization(q="4"), TypeError, "'q'|q must be a number"),
        (lambda: KLRetention(scale=0.0), ValueError, "scale"),
        (lambda: ElasticNet(threshold=-0.1), ValueError, "threshold"),
        (lambda: Muon(steps=0), ValueError, "steps"),
        (lambda: Muon(steps=True), ValueError, "steps"),
        (lambda: PolynomialFeatures(0), ValueError, "degree"),
        (lambda: PolynomialFeatures(2.0), (TypeError, ValueError), "degree"),
    ],
)
def test_components_refuse_bad_settings(build, error: type | tuple[type, ...], message: str) -> None:  # noqa: ANN001
    with pytest.raises(error, match=message):
        build()
