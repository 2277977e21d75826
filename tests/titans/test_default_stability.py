"""Defaults are the product: TitansConfig() of every memory variant, and the tiny preset, give
finite logits at initialisation on random, repeated and periodic ids, beyond a few hundred
tokens (where the literal update returned NaN)."""

from __future__ import annotations

import pytest
import torch

from titans import TitansConfig, TitansLM


def _ids(kind: str, vocab: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        return torch.randint(0, vocab, (1, length), generator=g)
    if kind == "repeat":
        return torch.full((1, length), 3)
    return torch.randint(0, vocab, (1, 16), generator=g).repeat(1, length // 16)


@pytest.mark.parametrize("variant", ["mac", "mag", "mal", "lmm"])
@pytest.mark.parametrize("preset", ["default", "tiny"])
def test_default_config_is_finite_beyond_a_thousand_tokens(variant: str, preset: str) -> None:
    torch.manual_seed(0)
    config = TitansConfig(variant=variant) if preset == "default" else TitansConfig.preset("tiny", variant=variant)
    model = TitansLM(config).eval()
    for kind in ("random", "repeat", "periodic"):
        with torch.no_grad():
            logits = model(_ids(kind, config.vocab_size, 1024)).logits
        assert torch.isfinite(logits).all(), (variant, preset, kind)


def test_a_config_document_from_before_the_rules_keeps_the_literal_update() -> None:
    """A checkpoint's config written before step_scale existed describes a model trained with
    the literal update: loading it must not switch that model to the new rules."""
    import json

    config = TitansConfig(variant="mag")
    old = json.loads(config.to_json())
    for field in ("step_scale", "forget_target"):
        del old["config"][field]
    loaded = TitansConfig.from_json(json.dumps(old))
    assert (loaded.step_scale, loaded.forget_target) == ("literal", "zero")
    assert TitansConfig.from_json(config.to_json()) == config  # a current document round-trips
