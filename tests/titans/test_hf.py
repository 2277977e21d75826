"""The Hugging Face adapter (titans.hf) behaves as the TitansLM it wraps."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from titans import TitansLM, compat
from titans.hf import TitansForCausalLM, TitansHFConfig, TitansMACConfig, TitansMACForCausalLM

from .helpers import VARIANTS, tiny, token_ids


def _pair(variant: str, device: torch.device, **overrides: object) -> tuple[TitansForCausalLM, TitansLM]:
    """An HF model and a TitansLM of the same config holding the same weights."""
    config = tiny(variant, vocab_size=32, dim=16, **overrides)
    torch.manual_seed(0)
    hf = TitansForCausalLM(TitansHFConfig(config)).to(device).eval()
    lm = TitansLM(config).to(device).eval()
    lm.load_state_dict(hf.model.state_dict())
    return hf, lm


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_loss_equal_titans_lm(variant, device):
    hf, lm = _pair(variant, device)
    ids = token_ids(lm.config, 2, 11, seed=1, device=device)
    labels = ids.clone()
    labels[0, 4] = -100
    out = hf(ids, labels=labels)
    # TitansLM's labels are already shifted: position t is scored on the token t + 1.
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    ref = lm(ids, labels=shifted)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    by_hand = torch.nn.functional.cross_entropy(
        ref.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, by_hand)
    assert out.state.position == 11


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generate_equals_titans_lm_with_and_without_cache(variant, device):
    hf, lm = _pair(variant, device)
    prompt = token_ids(lm.config, 2, 6, seed=2, device=device)
    expected = lm.generate(prompt, max_new_tokens=4, temperature=0.0).tokens
    for use_cache in (True, False):
        seq = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                          use_cache=use_cache)
        torch.testing.assert_close(seq[:, :6], prompt)
        torch.testing.assert_close(seq[:, 6:], expected, msg=f"use_cache={use_cache}")


def test_the_cache_feeds_one_token_per_step_and_no_cache_the_whole_prefix():
    hf, _ = _pair("mag", torch.device("cpu"))
    calls = []
    forward = hf.model.forward

    def recording(input_ids, state=None, labels=None):
        calls.append((input_ids.shape[1], None if state is None else state.position))
        return forward(input_ids, state, labels)

    hf.model.forward = recording
    prompt = token_ids(hf.model.config, 1, 5, seed=3, device=torch.device("cpu"))
    hf.generate(prompt, max_new_tokens=3, do_sample=False)
    assert calls == [(5, None), (1, 5), (1, 6)]
    calls.clear()
    hf.generate(prompt, max_new_tokens=3, do_sample=False, use_cache=False)
    assert calls == [(5, None), (6, None), (7, None)]


@pytest.mark.parametrize("variant", ["mac", "lmm", "transformer"])
@pytest.mark.parametrize("tie", [False, True])
def test_save_and_auto_from_pretrained_round_trip(variant, tie, tmp_path):
    hf, _ = _pair(variant, torch.device("cpu"), tie_embeddings=tie)
    hf.config.eos_token_id = 3
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "titans" and saved["titans"]["variant"] == variant
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is TitansForCausalLM and not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.to_titans_config() == hf.config.to_titans_config()
    assert loaded.config.eos_token_id == 3
    for name, tensor in hf.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert (loaded.model.head.weight is loaded.model.embedding.weight) == tie
    ids = token_ids(hf.model.config, 2, 9, seed=4, device=torch.device("cpu"))
    torch.testing.assert_close(loaded(ids).logits, hf(ids).logits, rtol=0, atol=0)


def test_a_tied_embedding_is_stored_once(tmp_path):
    from safetensors import safe_open

    hf, _ = _pair("swa", torch.device("cpu"), tie_embeddings=True)
    hf.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embedding.weight" in names and "model.head.weight" not in names


def test_a_checkpoint_missing_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    hf, _ = _pair("lmm", torch.device("cpu"))
    hf.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.norm.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"from_pretrained: the checkpoint lacks the weights \['model.norm.weight'\]"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_streaming_through_forward_matches_one_call():
    hf, _ = _pair("mal", torch.device("cpu"))
    ids = token_ids(hf.model.config, 2, 10, seed=5, device=torch.device("cpu"))
    whole = hf(ids).logits
    first = hf(ids[:, :6])
    second = hf(ids[:, 6:], state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], dim=1), whole)
    assert hf(ids, use_cache=False).state is None
    loss, logits, state = hf(ids, labels=ids, return_dict=False)
    assert logits.shape == (2, 10, 32) and loss.ndim == 0 and state.position == 10


def test_from_titans_wraps_an_existing_model():
    _, lm = _pair("mac", torch.device("cpu"))
    hf = TitansForCausalLM.from_titans(lm, eos_token_id=1)
    assert hf.model is lm and hf.config.eos_token_id == 1
    ids = token_ids(lm.config, 1, 6, seed=6, device=torch.device("cpu"))
    torch.testing.assert_close(hf(ids).logits, lm(ids).logits, rtol=0, atol=0)
    with pytest.raises(TypeError, match="from_titans: model must be a TitansLM"):
        TitansForCausalLM.from_titans(torch.nn.Linear(2, 2))


def test_the_reference_mac_names_are_real_transformers_classes(tmp_path):
    fields = dict(num_tokens=40, d_model=16, depth=2, num_heads=2, dim_head=8, segment_len=4,
                  num_longterm_mem_tokens=2, persistent_size=2, ff_mult=2.0, neural_memory_layers=[2],
                  context_window=64)
    config = TitansMACConfig(**fields)
    assert isinstance(config, transformers.PretrainedConfig)
    assert config.to_titans_config() == compat.TitansMACConfig(**fields).to_titans_config()
    torch.manual_seed(0)
    model = TitansMACForCausalLM(config).eval()
    reference = compat.TitansMACForCausalLM(compat.TitansMACConfig(**fields)).eval()
    reference.model.load_state_dict(model.model.state_dict())
    ids = torch.randint(0, 40, (2, 9))
    out, ref = model(ids, labels=ids), reference(ids, labels=ids)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is TitansMACConfig
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is TitansMACForCausalLM and loaded.config.neural_memory_layers == [2]
    torch.testing.assert_close(loaded(ids).logits, out.logits, rtol=0, atol=0)
    # The reference's generate(): max_length tokens in all, greedy, as compat's.
    short = TitansMACForCausalLM(TitansMACConfig(**fields, max_length=12, eos_token_id=39)).eval()
    long = compat.TitansMACForCausalLM(compat.TitansMACConfig(**fields, max_length=12, eos_token_id=39)).eval()
    long.model.load_state_dict(short.model.state_dict())
    prompt = ids[:, :5]
    expected = long.generate(prompt, temperature=0.0)
    seq = short.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False)
    torch.testing.assert_close(seq, expected)
    with pytest.raises(ValueError, match="TitansMACConfig.*num_memory_tokens"):
        TitansMACConfig(d_model=32, num_heads=2, dim_head=16, segment_len=4, num_longterm_mem_tokens=5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown fields"):
        TitansHFConfig({"variant": "mag", "colour": 3})
    with pytest.raises(ValueError, match="variant"):
        TitansHFConfig({"variant": "rnn"})
    with pytest.raises(TypeError, match="TitansHFConfig: titans must be a TitansConfig"):
        TitansHFConfig("mag")
    with pytest.raises(ValueError, match=r"TitansHFConfig: hidden_size=48 disagrees with titans.dim=32"):
        TitansHFConfig(tiny("mag"), hidden_size=48)
    with pytest.raises(ValueError, match=r"tie_word_embeddings=True disagrees with titans.tie_embeddings=False"):
        TitansHFConfig(tiny("mag"), tie_word_embeddings=True)
    with pytest.raises(TypeError, match="TitansForCausalLM: config must be a TitansHFConfig"):
        TitansForCausalLM(transformers.GPT2Config())
    assert TitansHFConfig().to_titans_config().variant == "mac"


def test_bad_inputs_get_one_clear_error():
    hf, _ = _pair("mag", torch.device("cpu"))
    ids = token_ids(hf.model.config, 2, 6, seed=7, device=torch.device("cpu"))
    padded = torch.ones_like(ids)
    padded[1, 0] = 0
    with pytest.raises(ValueError, match="TitansForCausalLM: attention_mask holds zeros: padding is not supported"):
        hf(ids, attention_mask=padded)
    with pytest.raises(ValueError, match="attention_mask must be"):
        hf(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, vocab_size=32\) or -100, got 32"):
        hf(ids, labels=torch.full_like(ids, 32))
    with pytest.raises(TypeError, match="labels must be an int64/int32 tensor"):
        hf(ids, labels=ids.float())
    with pytest.raises(ValueError, match="labels have shape"):
        hf(ids, labels=ids[:, :3])
    with pytest.raises(ValueError, match="no label is left after the shift"):
        hf(ids[:, :1], labels=ids[:, :1])
    with pytest.raises(TypeError, match="input_ids"):  # TitansLM's check, or jaxtyping's in the tests
        hf(ids.float())
    with pytest.raises(ValueError, match="num_beams must be 1"):
        hf.generate(ids, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match="state is managed by generate"):
        hf.generate(ids, max_new_tokens=2, state=hf(ids).state)
    with pytest.raises(ValueError, match="attention_mask holds zeros"):
        hf.generate(ids, attention_mask=padded, max_new_tokens=2)


def test_import_titans_does_not_import_transformers_and_a_missing_extra_says_how_to_install():
    code = (
        "import sys\n"
        "import titans\n"
        "assert 'transformers' not in sys.modules, 'import titans imported transformers'\n"
        "sys.modules['transformers'] = None  # as if it were not installed\n"
        "try:\n"
        "    import titans.hf\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert 'pip install "titans-memory-blocks[hf]"' in done.stdout


def test_mac_config_saved_with_the_reference_chunk_reloads_with_it():
    """A config saved before compat counted the chunk in segment tokens (chunk 12 = 8 + 4 taken
    as it is) keeps the chunk its model was trained with; any other disagreement is refused."""
    fields = dict(num_tokens=50, d_model=16, depth=1, num_heads=2, dim_head=8, segment_len=8,
                  num_longterm_mem_tokens=4, persistent_size=2, neural_memory_segment_len=12)
    mapped = compat.TitansMACConfig(**fields).to_titans_config()
    assert mapped.chunk_size == 8
    old = dataclasses.replace(mapped, chunk_size=12)
    assert TitansMACConfig(**fields, titans=old.to_dict()).to_titans_config().chunk_size == 12
    assert TitansMACConfig(**fields, titans=mapped.to_dict()).to_titans_config().chunk_size == 8
    with pytest.raises(ValueError, match="saved titans config is not the one"):
        TitansMACConfig(**fields, titans=dataclasses.replace(mapped, chunk_size=4).to_dict())
    with pytest.raises(ValueError, match="saved titans config is not the one"):
        TitansMACConfig(**fields, titans=dataclasses.replace(old, num_persistent=3).to_dict())


def test_a_mag_config_saved_before_its_forgetting_ceiling_reloads_unbounded(tmp_path):
    """A config.json without ``titans_version`` (written before MAG's default ceiling, version 1)
    rebuilds the unbounded forgetting gate its MAG was trained with; one written now keeps the
    default ceiling; a user's dict means today's defaults."""
    hf, _ = _pair("mag", torch.device("cpu"))
    hf.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["titans_version"] == 2 and saved["titans"]["decay_gate_max"] is None
    assert AutoConfig.from_pretrained(tmp_path).to_titans_config().resolved_decay_gate_max == 1e-3
    del saved["titans_version"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = AutoConfig.from_pretrained(tmp_path)
    assert old.to_titans_config().decay_gate_max == 1.0 and old.titans_version == 2
    assert TitansHFConfig(titans=saved["titans"]).to_titans_config().resolved_decay_gate_max == 1e-3
    with pytest.raises(ValueError, match="TitansHFConfig: titans_version must be an integer from 1 to 2"):
        TitansHFConfig(titans=saved["titans"], titans_version=3)
