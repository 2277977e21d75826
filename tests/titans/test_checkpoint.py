"""Save and load: safetensors + JSON, identical outputs, no pickle anywhere."""

from __future__ import annotations

import json

import pytest
import torch

from titans import TitansConfig, load_pretrained, save_pretrained
from tests.titans.helpers import VARIANTS, build, token_ids


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_gives_identical_outputs(device, tmp_path, variant):
    config = TitansConfig.preset("tiny", variant=variant, tie_embeddings=variant == "mag")
    model = build(config, device, seed=3)
    path = save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    loaded = load_pretrained(path, device=device)
    assert loaded.config == config
    assert loaded.embedding.weight.dtype == torch.float64
    ids = token_ids(config, 2, 11, 0, device)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    if config.tie_embeddings:
        assert loaded.head.weight is loaded.embedding.weight


def test_methods_equal_the_functions(tmp_path):
    from titans import TitansLM

    model = build(TitansConfig.preset("tiny", variant="mag"), torch.device("cpu"), seed=5)
    by_method = model.save_pretrained(tmp_path / "method")
    by_function = save_pretrained(model, tmp_path / "function")
    for name in ("config.json", "model.safetensors", "manifest.json"):
        assert (by_method / name).read_bytes() == (by_function / name).read_bytes()
    loaded = TitansLM.from_pretrained(by_method)
    assert isinstance(loaded, TitansLM) and loaded.config == model.config
    reference = load_pretrained(by_function)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_files_are_plain_data(tmp_path):
    model = build(TitansConfig.preset("tiny"), torch.device("cpu"))
    path = save_pretrained(model, tmp_path)
    document = json.loads((path / "config.json").read_text())
    assert document["format"] == "titans-config" and document["dtype"] == "float64"
    header_size = int.from_bytes((path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((path / "model.safetensors").read_bytes()[8 : 8 + header_size])
    assert "embedding.weight" in header


def test_missing_files_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(tmp_path)
