"""The reference MAC API keeps working, mapped onto TitansConfig / TitansLM."""

from __future__ import annotations

import pytest
import torch

from titans import TitansMACConfig, TitansMACForCausalLM


def test_the_reference_usage_as_written():
    config = TitansMACConfig(num_tokens=10000, d_model=256, depth=2, num_heads=4, dim_head=64, segment_len=32,
        num_longterm_mem_tokens=4, persistent_size=8, neural_memory_segment_len=36, context_window=256)
    model = TitansMACForCausalLM(config)
    outputs = model(input_ids=torch.randint(0, config.num_tokens, (1, 16)))
    assert outputs.logits.shape == (1, 16, 10000)


def test_mapping_onto_titans_config():
    c = TitansMACConfig(num_tokens=100, d_model=32, depth=3, num_heads=2, dim_head=16, segment_len=8,
                        num_longterm_mem_tokens=4, persistent_size=2, neural_memory_layers=[1, 3],
                        context_window=64)
    t = c.to_titans_config()
    assert (t.variant, t.vocab_size, t.dim, t.depth, t.heads, t.dim_head) == ("mac", 100, 32, 3, 2, 16)
    assert (t.segment_len, t.num_memory_tokens, t.num_persistent) == (8, 4, 2)
    assert t.chunk_size == 8  # the reference's default chunk, one window (8 + 4), is one segment here
    assert t.memory_layers == (0, 2) and t.max_seq_len == 64


@pytest.mark.parametrize(
    ("segment", "mem_tokens", "chunk", "expected"),
    [
        (32, 4, 36, 32),  # the README snippet: one window of the interleaved stream -> one segment
        (32, 4, 72, 64),  # two windows -> two segments
        (32, 4, 16, 16),  # not a whole number of windows: taken as it is
        (32, 4, 4, 4),  # divides both the segment and the memory tokens: the same chunks
        (32, 0, 16, 16),  # no memory tokens: the streams are the same
        (8, 4, None, 8),
    ],
)
def test_chunk_counts_segment_tokens(segment, mem_tokens, chunk, expected):
    """The reference's chunk counts its interleaved stream (segments and their memory tokens);
    the memory here writes segment tokens only."""
    c = TitansMACConfig(d_model=32, num_heads=2, dim_head=16, depth=1, segment_len=segment,
                        num_longterm_mem_tokens=mem_tokens, persistent_size=2, neural_memory_segment_len=chunk)
    assert c.to_titans_config().chunk_size == expected


def test_bad_chunk_fields_reach_the_config_validation():
    """The chunk mapping leaves a wrongly typed field to TitansConfig, whose message names it."""
    from .test_config import library_checks_only

    with library_checks_only(), pytest.raises(ValueError, match="TitansConfig.*segment_len"):
        TitansMACConfig(d_model=32, num_heads=2, dim_head=16, segment_len="8", neural_memory_segment_len=8)
    with pytest.raises(ValueError, match="TitansConfig.*chunk_size"):
        TitansMACConfig(d_model=32, num_heads=2, dim_head=16, segment_len=8, neural_memory_segment_len=0)


def test_invalid_reference_config_raises_with_the_mapping():
    with pytest.raises(ValueError, match="TitansMACConfig.*num_memory_tokens"):
        TitansMACConfig(d_model=32, num_heads=2, dim_head=16, segment_len=4, num_longterm_mem_tokens=5)
    with pytest.raises(ValueError, match="neural_memory_layers"):
        TitansMACConfig(d_model=32, num_heads=2, dim_head=16, depth=2, neural_memory_layers=(0,))


def _small(device):
    torch.manual_seed(0)
    config = TitansMACConfig(num_tokens=50, d_model=16, depth=1, num_heads=2, dim_head=8, segment_len=4,
                             num_longterm_mem_tokens=2, persistent_size=2, ff_mult=2.0, max_length=12)
    return TitansMACForCausalLM(config).to(device=device, dtype=torch.float64)


def test_labels_follow_the_hugging_face_shift(device):
    model = _small(device)
    ids = torch.randint(0, 50, (2, 9), device=device)
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)


def test_generate_returns_prompt_and_new_tokens(device):
    model = _small(device)
    prompt = torch.randint(0, 50, (2, 5), device=device)
    seq = model.generate(prompt, temperature=0.0)
    assert seq.shape == (2, 12)  # config.max_length
    torch.testing.assert_close(seq[:, :5], prompt)
    greedy = model.model.generate(prompt, max_new_tokens=7, temperature=0.0).tokens
    torch.testing.assert_close(seq[:, 5:], greedy)
    first = int(seq[0, 5])
    stopped = model.generate(prompt[:1], max_new_tokens=4, temperature=0.0, eos_token_id=first)
    assert stopped.shape == (1, 6)  # stops once every row has produced eos


def test_bad_labels_and_sampling_arguments_are_refused_clearly():
    model = _small(torch.device("cpu"))
    ids = torch.randint(0, 50, (2, 5))
    with pytest.raises(ValueError, match=r"ForCausalLM: labels must lie in \[0, vocab_size=50\) or -100, got 50"):
        model(ids, labels=torch.full_like(ids, 50))
    labels = torch.full_like(ids, -100)
    labels[:, 0] = 3  # the shift drops the only scored column
    with pytest.raises(ValueError, match="no label left to score"):
        model(ids, labels=labels)
    with pytest.raises(ValueError, match="TitansMACForCausalLM.generate: temperature"):
        model.generate(ids, max_new_tokens=2, temperature=float("nan"))
    with pytest.raises(ValueError, match="TitansMACForCausalLM.generate: eos_token_id"):
        model.generate(ids, max_new_tokens=2, eos_token_id=50)
    with pytest.raises(ValueError, match="TitansMACConfig.ff_mult"):
        TitansMACConfig(d_model=16, num_heads=2, dim_head=8, ff_mult=float("inf"))
