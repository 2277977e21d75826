"""TitansConfig: validation naming the field, presets, JSON round trip, parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from titans import PRESETS, TitansConfig, TitansLM, count_parameters
from tests.titans.helpers import VARIANTS


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
    ],
)
def test_invalid_configs_name_the_field(fields, field):
    with pytest.raises(ValueError, match=rf"TitansConfig\.{field}"):
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
    block = attention + memory + combine + c.num_persistent * d + 2 * d + 3 * d * hidden
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
    import json

    for combine, expected in ((None, "product"), ("sigmoid", "sigmoid")):
        old = json.loads(TitansConfig(variant="mac", combine=combine).to_json())
        del old["config"]["mac_write"]
        loaded = TitansConfig.from_json(json.dumps(old))
        assert (loaded.mac_write, loaded.resolved_combine) == ("attention", expected)
    current = TitansConfig(variant="mac")
    assert TitansConfig.from_json(current.to_json()) == current
    assert (current.mac_write, current.resolved_combine) == ("input", "normalized")
