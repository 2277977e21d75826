"""Named memory recipes (Titans, Moneta, Yaad, Memora, ATLAS): selectable in ``TitansConfig`` and
on the command line, built into the right components, and finite and bounded at their gates'
extremes (the stability property of tests/memory_blocks/test_stability.py, per recipe)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import ConstantGate, KLRetention, L2Decay, LqNormalization, Muon, PolynomialFeatures
from titans.builders import build_memory
from titans.config import TitansConfig
from titans.recipes import RECIPES, recipe_fields

DIM, HEADS = 16, 2


def _config(recipe: str, chunk: int = 4) -> TitansConfig:
    return TitansConfig.from_recipe(recipe, dim=DIM, heads=HEADS, chunk_size=chunk, memory_expansion=2.0)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_sets_its_fields_and_round_trips(recipe: str) -> None:
    config = _config(recipe)
    for field, value in RECIPES[recipe].items():
        assert getattr(config, field) == value
    assert TitansConfig.from_json(config.to_json()) == config
    assert TitansConfig.from_recipe(recipe, chunk_size=8).chunk_size == 8  # fields override a recipe


def test_recipes_build_their_components() -> None:
    layers = {r: build_memory(_config(r)) for r in RECIPES}
    assert isinstance(layers["titans"].retention, L2Decay) and layers["titans"].omega_gate is None
    assert isinstance(layers["moneta"].retention, LqNormalization) and layers["moneta"].retention.q == 4.0
    assert layers["moneta"].objective.p == 3.0
    assert layers["yaad"].objective.delta == 1.0 and isinstance(layers["yaad"].retention, L2Decay)
    assert isinstance(layers["memora"].retention, KLRetention)
    # Memora reads its retention per chunk (MIRAS' chunk-wise form), Moneta per token; each is
    # one field away from the other
    assert layers["memora"].retention.per_chunk and not layers["moneta"].retention.per_chunk
    assert not build_memory(dataclasses.replace(_config("memora"), retention_readout="token")).retention.per_chunk
    assert build_memory(dataclasses.replace(_config("moneta"), retention_readout="chunk")).retention.per_chunk
    atlas = layers["atlas"]
    assert isinstance(atlas.optimizer, Muon) and atlas.omega_window == 4 and atlas.omega_gate is not None
    assert isinstance(atlas.feature_map, PolynomialFeatures) and atlas.feature_map.degree == 2
    default = build_memory(TitansConfig(dim=DIM, heads=HEADS))
    assert repr(default) == repr(build_memory(TitansConfig.from_recipe("titans", preset="tiny", dim=DIM, heads=HEADS,
                                                                       **{f: getattr(TitansConfig(), f) for f in (
                                                                           "vocab_size", "depth", "ffn_hidden",
                                                                           "memory_expansion", "chunk_size")})))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(retention="nope"), "TitansConfig.retention"),
        (dict(retention="lq", retention_readout="block"), "TitansConfig.retention_readout"),
        (dict(retention="lq", retention_kwargs={"q": 1.0}), "TitansConfig.retention_kwargs"),
        (dict(feature_map="cubic"), "TitansConfig.feature_map"),
        (dict(feature_map="polynomial", feature_map_kwargs={"degree": 0}), "TitansConfig.feature_map_kwargs"),
        (dict(omega_window=0), "TitansConfig.omega_window"),
        (dict(optimizer="adamw"), "TitansConfig.optimizer"),
    ],
)
def test_config_refuses_bad_design_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TitansConfig(**fields)


def test_unknown_recipe_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown recipe 'hope'"):
        TitansConfig.from_recipe("hope")
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_fields("Titans")


def test_cli_recipe_flag_sets_the_fields_before_overrides() -> None:
    from titans.experiments.cli import _model_config, build_parser

    def config(*flags: str) -> TitansConfig:
        args = build_parser().parse_args(["train", "--variant", "mag", "--task", "mqar", "--out", "x", *flags])
        return _model_config(args)

    atlas = config("--recipe", "atlas")
    assert (atlas.optimizer, atlas.omega_window, atlas.feature_map) == ("muon", 4, "polynomial")
    moneta = config("--recipe", "moneta", "--objective", "huber", "--retention", "kl", "--omega-window", "2")
    assert (moneta.objective, moneta.retention, moneta.omega_window) == ("huber", "kl", 2)
    with pytest.raises(SystemExit):
        config("--recipe", "hope")


def _pin(layer, theta: float, eta: float, alpha: float, gamma: float):  # noqa: ANN001, ANN202
    layer.lr_gate = ConstantGate(theta * layer.lr_gate.max_value, HEADS)
    layer.momentum_gate = ConstantGate(eta, HEADS)
    layer.decay_gate = ConstantGate(alpha, HEADS)
    if layer.omega_gate is not None:
        layer.omega_gate = ConstantGate(gamma, HEADS)
    return layer


@settings(max_examples=10, deadline=None)
@given(
    recipe=st.sampled_from(sorted(RECIPES)),
    chunk=st.sampled_from([1, 4, 16]),
    inputs=st.sampled_from(["random", "repeat", "zeros", "large"]),
    # None: the learned gates as initialised; else (theta, eta, alpha, gamma) at their range's ends
    pinned=st.one_of(st.none(), st.tuples(*[st.sampled_from([0.0, 0.001, 0.999])] * 3, st.sampled_from([0.0, 1.0]))),
    seed=st.integers(0, 1000),
)
def test_every_recipe_stays_finite_and_bounded(recipe: str, chunk: int, inputs: str, pinned, seed: int) -> None:  # noqa: ANN001
    torch.manual_seed(seed)
    layer = build_memory(_config(recipe, chunk))
    if pinned is not None:
        layer = _pin(layer, *pinned)
    g = torch.Generator().manual_seed(seed)
    length = 64 if chunk > 1 else 32
    x = {
        "random": lambda: torch.randn(1, length, DIM, generator=g),
        "repeat": lambda: torch.randn(1, 1, DIM, generator=g).expand(1, length, DIM).contiguous(),
        "zeros": lambda: torch.zeros(1, length, DIM),
        "large": lambda: 100 * torch.randn(1, length, DIM, generator=g),
    }[inputs]
    state = None
    with torch.no_grad():
        for _ in range(2):  # two calls, carrying the state
            y, state = layer(x(), state)
            assert torch.isfinite(y).all()
    tiny = torch.finfo(torch.float32).tiny
    for name, w in state.memory.weights.items():
        assert torch.isfinite(w).all(), name
        assert w.abs().max() < 1e4, (name, float(w.abs().max()))
        assert not ((w != 0) & (w.abs() < tiny)).any(), f"subnormal entries in {name}"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_trains_finite(recipe: str) -> None:
    """One outer step of a tiny language model per recipe: finite loss and gradients."""
    from titans.model import TitansLM

    torch.manual_seed(0)
    config = dataclasses.replace(TitansConfig.from_recipe(recipe, variant="mag"), chunk_size=4)
    model = TitansLM(config)
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
