"""Helpers shared by the titans tests: tiny configs, builders, state sizes."""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from titans import TitansConfig, TitansLM

VARIANTS = ("mac", "mag", "mal", "lmm", "swa", "transformer")
MEMORY_VARIANTS = ("mac", "mag", "mal", "lmm")

#: Few examples, no deadline; the device fixture is function-scoped but stateless.
SMALL = settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def small_configs(draw: st.DrawFn, variant: str) -> dict:
    """The fields of a tiny, randomly shaped config of ``variant`` (sizes that exercise partial
    segments, chunks, windows and persistent tokens). Fields, not a config: the runtime type
    checker samples containers with ``random``, which hypothesis forbids inside strategies."""
    heads = draw(st.sampled_from([1, 2]))
    dim = 8 * heads
    segment = draw(st.integers(1, 5))
    return dict(
        variant=variant,
        vocab_size=11,
        dim=dim,
        depth=draw(st.integers(1, 2)),
        heads=heads,
        ffn_hidden=12,
        memory_model=draw(st.sampled_from(["mlp", "linear", "gated_mlp"])),
        memory_expansion=2.0,
        memory_depth=draw(st.integers(1, 2)),
        chunk_size=draw(st.integers(1, 4)),
        conv_kernel=draw(st.sampled_from([0, 2, 4])),
        window=draw(st.integers(1, 6)),
        segment_len=segment,
        num_persistent=draw(st.integers(0, 2)),
        num_memory_tokens=draw(st.integers(0, segment)),
        combine=draw(st.sampled_from([None, "product", "sigmoid", "normalized"])) if variant in ("mac", "mag") else None,
        mac_write=draw(st.sampled_from(["attention", "input"])),
        mac_memory_positions=draw(st.sampled_from(["prefix", "aligned"])),
        mac_memory_visibility=draw(st.sampled_from(["causal", "own"])),
        mac_retrieve_query=draw(st.sampled_from(["shared", "separate"])),
        max_seq_len=64,
    )


def build(config: TitansConfig, device: torch.device, seed: int = 0) -> TitansLM:
    torch.manual_seed(seed)
    return TitansLM(config).to(device=device, dtype=torch.float64)


def token_ids(config: TitansConfig, batch: int, seq: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, seq), generator=g).to(device)


def state_numel(obj: object) -> int:
    """Elements held by the tensors of a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if dataclasses.is_dataclass(obj):
        return sum(state_numel(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(state_numel(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(state_numel(v) for v in obj)
    return 0


def tiny(variant: str, **overrides: object) -> TitansConfig:
    return TitansConfig.preset("tiny", variant=variant, **overrides)
