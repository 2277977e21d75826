"""TitansConfig: validation naming the field, presets, JSON round trip, parameter counts."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator

import jaxtyping
import pytest
import torch

from titans import PRESETS, TitansConfig, TitansLM, count_parameters
from tests.titans.helpers import VARIANTS


@contextlib.contextmanager
def library_checks_only() -> Iterator[None]:
    """The tests run with jaxtyping's runtime type checks, which refuse a wrongly typed argument
    before the library sees it; inside this block the library's own checks (what a user meets)
    answer."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (dict(dim=30, heads=4), "heads"),
        (dict(window=0), "window"),
        (dict(window=-3), "window"),
        (dict(variant="mamba"), "variant"),
        (dict(memory_model="transformer"), "memory_model"),
        (dict(objective="cross_entropy"), "objective"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(combine="sum"), "combine"),
        (dict(lr_gate="random"), "lr_gate"),
        (dict(lr_gate=None), "lr_gate"),
        (dict(lr_gate_init=0.0), "lr_gate_init"),
        (dict(lr_gate_init=0.2, lr_gate_max=0.1), "lr_gate_init"),
        (dict(lr_gate_max=float("inf")), "lr_gate_max"),
        (dict(decay_gate=-0.5), "decay_gate"),
        (dict(memory_activation="swish"), "memory_activation"),
        (dict(memory_heads=3), "memory_heads"),
        (dict(segment_len=4, num_memory_tokens=5), "num_memory_tokens"),
        (dict(memory_layers=(0, 2), depth=2), "memory_layers"),
        (dict(segment_len=0), "segment_len"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(dim=12, heads=4), "dim_head"),  # odd dim_head: no rotary
        (dict(objective="huber", objective_kwargs={"p": 3.0}), "objective_kwargs"),
        (dict(optimizer="gd", momentum_gate=0.9), "momentum_gate"),
        (dict(attention_backend="cuda"), "attention_backend"),
        (dict(mac_write="output"), "mac_write"),
        (dict(mac_memory_positions="suffix"), "mac_memory_positions"),
        (dict(mac_memory_visibility="all"), "mac_memory_visibility"),
        (dict(mac_retrieve_query="learned"), "mac_retrieve_query"),
        # the gates' stable ranges (docs/guides/stability.md)
        (dict(momentum_gate=2.0), "momentum_gate"),
        (dict(momentum_gate=1.0), "momentum_gate"),
        (dict(decay_gate=5.0), "decay_gate"),
        (dict(lr_gate=10.0), "lr_gate"),
        (dict(lr_gate=0.0), "lr_gate"),
        (dict(lr_gate=2.0, step_scale="literal"), "lr_gate"),
        (dict(lr_gate=float("nan")), "lr_gate"),
        (dict(lr_gate=True), "lr_gate"),
        (dict(lr_gate_init=1e-300, lr_gate_max=1e300), "lr_gate_max"),
        (dict(lr_gate_init=1e-300, lr_gate_max=0.5), "lr_gate_init"),
        (dict(lr_gate_init=0.5 - 1e-12, lr_gate_max=0.5), "lr_gate_init"),
        (dict(decay_gate_max=0.0), "decay_gate_max"),
        (dict(decay_gate_max=1.5), "decay_gate_max"),
        (dict(decay_gate_init=0.2, decay_gate_max=0.1), "decay_gate_init"),
        (dict(decay_gate_init=1e-300, decay_gate_max=0.5), "decay_gate_init"),
        (dict(decay_gate=None, decay_gate_max=0.1), "decay_gate_max"),
        (dict(decay_gate=0.01, decay_gate_init=0.001), "decay_gate_init"),
        (dict(lr_gate=0.5, lr_gate_init=0.1), "lr_gate_init"),
        (dict(lr_gate=0.5, lr_gate_max=0.6), "lr_gate_max"),
        # booleans are bools, strings are strings
        (dict(tie_embeddings="no"), "tie_embeddings"),
        (dict(tie_embeddings=1), "tie_embeddings"),
        (dict(per_tensor_lr="false"), "per_tensor_lr"),
        (dict(memory_checkpoint=None), "memory_checkpoint"),
        (dict(variant=["mac"]), "variant"),
        (dict(memory_model={"mlp": 1}), "memory_model"),
        (dict(combine=3), "combine"),
        (dict(forget_target=0), "forget_target"),
        # every number finite and in range
        (dict(norm_eps=float("inf")), "norm_eps"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(norm_eps=1e-300), "norm_eps"),
        (dict(memory_expansion=1e6), "memory_expansion"),
        (dict(memory_expansion=float("inf")), "memory_expansion"),
        (dict(memory_expansion="4"), "memory_expansion"),
        (dict(rotary_base=float("inf")), "rotary_base"),
        (dict(rotary_base=True), "rotary_base"),
        (dict(dim=64.0), "dim"),
        (dict(depth=True), "depth"),
        (dict(dim_head="16"), "dim_head"),
        (dict(num_memory_tokens=-1), "num_memory_tokens"),
        (dict(objective_kwargs=None), "objective_kwargs"),
        (dict(objective="huber", objective_kwargs={"delta": float("nan")}), "objective_kwargs"),
        (dict(objective="huber", objective_kwargs={"delta": -1.0}), "objective_kwargs"),
        (dict(objective="lp", objective_kwargs={"p": 6.0}), "objective_kwargs"),
        (dict(memory_layers=1), "memory_layers"),
        (dict(memory_layers="01"), "memory_layers"),
        (dict(memory_layers=[0.0]), "memory_layers"),
    ],
)
def test_invalid_configs_name_the_field(fields, field):
    with library_checks_only(), pytest.raises(ValueError, match=rf"^TitansConfig\.{field}: "):
        TitansConfig(**fields)


@pytest.mark.parametrize("variant", VARIANTS)
def test_json_round_trip(variant):
    config = TitansConfig.preset(
        "tiny", variant=variant, memory_layers=(1,), objective="huber", objective_kwargs={"delta": 0.5},
        decay_gate=None, lr_gate=0.05,
    )
    again = TitansConfig.from_json(config.to_json())
    assert again == config
    assert again.memory_layers == (1,)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields"):
        TitansConfig.from_dict({**TitansConfig().to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="titans-config"):
        TitansConfig.from_json('{"dim": 8}')


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TitansConfig().dim = 8  # type: ignore[misc]


def test_paper_presets_have_the_papers_shapes():
    for name, depth, dim, heads in (("170m", 12, 768, 16), ("340m", 24, 1024, 16), ("760m", 24, 1536, 16)):
        config = TitansConfig.preset(name, variant="mag")
        assert (config.depth, config.dim, config.heads, config.variant) == (depth, dim, heads, "mag")
    assert TitansConfig.preset("tiny", window=4).window == 4
    with pytest.raises(ValueError, match="unknown preset"):
        TitansConfig.preset("7b")


def _expected_mac_parameters(c: TitansConfig) -> int:
    """MAC with an MLP memory, counted by hand from the components' definitions."""
    d, v, h, dh = c.dim, c.vocab_size, c.heads, c.resolved_dim_head
    hidden = c.ffn_hidden or -(-(8 * d) // (3 * 64)) * 64
    mh = c.resolved_memory_heads
    mdh = d // mh
    mem_hidden = round(mdh * c.memory_expansion)
    memory = (
        3 * d * d                      # W_q, W_k, W_v
        + 3 * d * c.conv_kernel + 3 * d  # depthwise convolution and its bias
        + 3 * (d * mh + mh)            # theta, eta, alpha gates
        + mdh                          # output RMSNorm per head
        + d * d + d * d                # output gate, output projection
        + mem_hidden * mdh + mdh * mem_hidden + mdh  # W_0 of the 2-layer memory MLP + LN gain
    )
    attention = d * h * dh + 2 * d * h * dh + h * dh * d
    combine = 2 * d if c.resolved_combine == "normalized" else 0  # the gate's two RMSNorm gains
    tokens_norm = d if c.resolved_memory_tokens and c.mac_memory_norm != "none" else 0  # memory tokens' gain
    block = attention + memory + combine + tokens_norm + c.num_persistent * d + 2 * d + 3 * d * hidden
    return 2 * v * d + d + c.depth * block


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts(name):
    config = TitansConfig.preset(name)
    count = count_parameters(config)
    assert count == _expected_mac_parameters(config)
    if name == "170m":
        assert 0.95 * 170e6 < count < 1.05 * 170e6


def test_count_on_meta_equals_a_real_model():
    config = TitansConfig.preset("tiny", variant="mal", tie_embeddings=True)
    model = TitansLM(config)
    assert count_parameters(config) == model.num_parameters()
    assert model.head.weight is model.embedding.weight
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.get_default_device().type == "cpu"


def test_a_config_document_from_before_macs_defaults_keeps_its_mac() -> None:
    """A MAC checkpoint's config written before ``mac_write`` existed describes a MAC that wrote
    the attention output and multiplied (eq. 25): loading it must rebuild that model."""
    for combine, expected in ((None, "product"), ("sigmoid", "sigmoid")):
        old = json.loads(TitansConfig(variant="mac", combine=combine).to_json())
        del old["config"]["mac_write"]
        loaded = TitansConfig.from_json(json.dumps(old))
        assert (loaded.mac_write, loaded.resolved_combine) == ("attention", expected)
    current = TitansConfig(variant="mac")
    assert TitansConfig.from_json(current.to_json()) == current
    assert (current.mac_write, current.resolved_combine) == ("input", "normalized")


def test_the_stable_edges_of_the_gates_are_accepted():
    for fields in (dict(momentum_gate=0.0, decay_gate=0.0, lr_gate=1.0), dict(decay_gate=1.0, momentum_gate=0.99),
                   dict(lr_gate=1.0, step_scale="literal"), dict(lr_gate_init=1e-6, lr_gate_max=1.0),
                   dict(memory_expansion=64.0, norm_eps=1.0)):
        assert TitansConfig(**fields)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", "expected a JSON object, got int"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"mac"', "expected a JSON object, got str"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"format": "titans-config", "config": 5}', "'config' must be a JSON object, got int"),
        ('{"format": "titans-config", "config": null}', "'config' must be a JSON object, got NoneType"),
    ],
)
def test_from_json_refuses_what_is_not_a_config_document(text, message):
    with pytest.raises(ValueError, match=rf"^TitansConfig\.from_json: {re.escape(message)}"):
        TitansConfig.from_json(text)


def test_from_json_refuses_wrongly_typed_fields_naming_them():
    with library_checks_only(), pytest.raises(TypeError, match="TitansConfig.from_json: expected a JSON string"):
        TitansConfig.from_json(5)  # type: ignore[arg-type]
    for name, value in (("tie_embeddings", "false"), ("objective_kwargs", None), ("dim", "64"),
                        ("memory_expansion", "Infinity"), ("lr_gate", float("nan")), ("memory_layers", {"0": 1})):
        document = json.loads(TitansConfig().to_json())
        document["config"][name] = value
        with library_checks_only(), pytest.raises(ValueError, match=rf"^TitansConfig\.{name}: "):
            TitansConfig.from_json(json.dumps(document))
    with library_checks_only(), pytest.raises(ValueError, match="TitansConfig.from_dict: expected a dict of fields"):
        TitansConfig.from_dict([("dim", 8)])  # type: ignore[arg-type]
    with library_checks_only(), pytest.raises(ValueError, match="unknown preset"):
        TitansConfig.preset(["tiny"])  # type: ignore[arg-type]


def test_a_false_flag_round_trips_as_false():
    config = TitansConfig.preset("tiny", tie_embeddings=False, per_tensor_lr=True)
    again = TitansConfig.from_json(config.to_json())
    assert again.tie_embeddings is False and again.per_tensor_lr is True and again == config
