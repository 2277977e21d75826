"""The registry: configs name components; a user-registered component becomes nameable."""

from __future__ import annotations

import pytest
import torch

from memory_blocks.memories import LinearMemory
from titans import TitansConfig, TitansLM, registry
from titans.blocks import AttentionBlock, MACBlock


def test_tables_list_the_built_in_names():
    assert {"mlp", "linear", "gated_mlp"} <= set(registry.MEMORY_MODELS)
    assert {"momentum", "gd"} <= set(registry.OPTIMIZERS)
    assert {"squared_error", "huber"} <= set(registry.OBJECTIVES)
    assert {"normalized", "product", "sigmoid"} <= set(registry.COMBINES)
    assert set(registry.VARIANTS) >= {"mac", "mag", "mal", "lmm", "swa", "transformer"}


def test_a_registered_memory_model_can_be_named():
    registry.MEMORY_MODELS.register(
        "biased_linear", lambda d, **kw: LinearMemory(d, d, bias=True), replace=True
    )
    model = TitansLM(TitansConfig.preset("tiny", variant="lmm", memory_model="biased_linear"))
    assert isinstance(model.blocks[0].memory.memory, LinearMemory)
    assert model.blocks[0].memory.memory.bias is not None
    with pytest.raises(ValueError, match="already registered"):
        registry.MEMORY_MODELS.register("biased_linear", lambda d, **kw: LinearMemory(d, d))


def test_get_names_the_field():
    with pytest.raises(ValueError, match="my.field: unknown objective 'nope'"):
        registry.OBJECTIVES.get("nope", "my.field")


def test_memory_layers_choose_which_blocks_carry_memory():
    model = TitansLM(TitansConfig.preset("tiny", variant="mag", memory_layers=(1,)))
    assert isinstance(model.blocks[0], AttentionBlock)
    assert hasattr(model.blocks[1], "memory")
    mac = TitansLM(TitansConfig.preset("tiny", variant="mac", memory_layers=(0,)))
    assert isinstance(mac.blocks[1], MACBlock) and mac.blocks[1].memory is None
    out = mac(torch.zeros(1, 3, dtype=torch.long))
    assert out.logits.shape == (1, 3, 64)


def test_the_learned_lr_gate_takes_the_configs_start_value_and_ceiling():
    for per_tensor in (False, True):
        config = TitansConfig.preset("tiny", variant="lmm", lr_gate_init=0.002, lr_gate_max=0.05,
                                     per_tensor_lr=per_tensor)
        memory = TitansLM(config).blocks[0].memory
        theta = memory.lr_gate(torch.zeros(1, 3, config.dim))
        values = list(theta.values()) if isinstance(theta, dict) else [theta]
        assert len(values) == (3 if per_tensor else 1)  # w1, w2, norm_weight of the MLP memory
        for value in values:  # a zero input leaves only the bias: the start value
            torch.testing.assert_close(value, torch.full_like(value, 0.002))
        assert memory.lr_gate.max_value == 0.05


def test_gates_swap_by_name_or_value():
    model = TitansLM(TitansConfig.preset("tiny", variant="lmm", lr_gate=0.1, decay_gate=None, optimizer="gd"))
    memory = model.blocks[0].memory
    assert memory.decay_gate is None and memory.momentum_gate is None
    assert type(memory.lr_gate).__name__ == "ConstantGate"


def test_errors_say_how_to_register(tmp_path) -> None:
    import subprocess
    import sys

    import pytest

    from memory_blocks import GatedMLPMemory, LinearMemory
    from titans import TitansConfig, TitansLM, registry

    from .test_config import library_checks_only

    with library_checks_only(), pytest.raises(
        ValueError, match=r"TitansConfig\.memory_model: expects the name of a registered memory model \(a string\), "
                          r"got a GatedMLPMemory object; register it first, titans\.registry\.MEMORY_MODELS\.register"):
        TitansConfig(memory_model=GatedMLPMemory(16))
    with pytest.raises(ValueError, match=r"unknown objective 'mine'.*titans\.registry\.OBJECTIVES\.register\('mine'"):
        TitansConfig(objective="mine")

    registry.MEMORY_MODELS.register("test_mine", lambda d, **kw: LinearMemory(d, d))
    try:
        TitansLM(TitansConfig.preset("tiny", variant="mag", memory_model="test_mine")).save_pretrained(tmp_path)
    finally:
        registry.MEMORY_MODELS._entries.pop("test_mine")
    # a fresh process that has not registered the component is told to
    done = subprocess.run([sys.executable, "-c", f"from titans import TitansLM; TitansLM.from_pretrained({str(tmp_path)!r})"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "unknown memory model 'test_mine'" in done.stderr
    assert "titans.registry.MEMORY_MODELS.register('test_mine', ...) (in every process" in done.stderr
