"""TitansLM: causality, streaming equals the parallel forward, gradients, generation.

Every property is checked for every variant, on small random configs, in float64.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from titans import TitansConfig, TitansLM, TitansState
from tests.titans.helpers import SMALL, VARIANTS, build, small_configs, state_numel, tiny, token_ids

TOL = dict(rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
@SMALL
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_logits_up_to_t_ignore_later_tokens(device, variant, data, seed):
    config = TitansConfig(**data.draw(small_configs(variant)))
    seq = data.draw(st.integers(2, 12))
    t = data.draw(st.integers(0, seq - 2))
    model = build(config, device, seed)
    ids = token_ids(config, 2, seq, seed, device)
    changed = ids.clone()
    changed[:, t + 1 :] = token_ids(config, 2, seq - t - 1, seed + 1, device)
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], **TOL)


def _stream(model: TitansLM, ids: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    state: TitansState | None = None
    pieces = []
    for start, end in zip([0, *cuts], [*cuts, ids.shape[1]]):
        out = model(ids[:, start:end], state)
        state = out.state
        pieces.append(out.logits)
    assert state.position == ids.shape[1]
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("variant", VARIANTS)
@SMALL
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_one_token_at_a_time_equals_parallel(device, variant, data, seed):
    config = TitansConfig(**data.draw(small_configs(variant)))
    seq = data.draw(st.integers(1, 12))
    model = build(config, device, seed)
    ids = token_ids(config, 2, seq, seed, device)
    with torch.no_grad():
        full = model(ids).logits
        stream = _stream(model, ids, list(range(1, seq)))
    torch.testing.assert_close(stream, full, **TOL)


@pytest.mark.parametrize("variant", VARIANTS)
@SMALL
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_random_splits_equal_parallel(device, variant, data, seed):
    config = TitansConfig(**data.draw(small_configs(variant)))
    seq = data.draw(st.integers(2, 16))
    cuts = sorted(data.draw(st.sets(st.integers(1, seq - 1), max_size=4)))
    model = build(config, device, seed)
    ids = token_ids(config, 1, seq, seed, device)
    with torch.no_grad():
        full = model(ids).logits
        stream = _stream(model, ids, cuts)
    torch.testing.assert_close(stream, full, **TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_receives_a_gradient(device, variant):
    # Two MAC segments, several memory chunks, more tokens than the window.
    config = tiny(variant, dim=16, segment_len=6, chunk_size=3, window=4, num_memory_tokens=3)
    model = build(config, device)
    ids = token_ids(config, 2, 14, 0, device)
    model(ids, labels=ids.roll(-1, dims=1)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} received a zero gradient"


def test_loss_of_pieces_adds_up(device):
    config = tiny("mac")
    model = build(config, device)
    ids = token_ids(config, 2, 13, 1, device)
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    full = model(ids, labels=labels).loss
    first = model(ids[:, :5], labels=labels[:, :5])
    second = model(ids[:, 5:], first.state, labels=labels[:, 5:])
    total = (first.loss * 5 + second.loss * 7) / 12  # 12 labelled positions
    torch.testing.assert_close(total, full, **TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_matches_recomputing_the_prefix(device, variant):
    config = tiny(variant)
    model = build(config, device)
    prompt = token_ids(config, 2, 5, 3, device)
    out = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    assert out.tokens.shape == (2, 6)
    assert out.state.position == 11
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    torch.testing.assert_close(out.tokens, seq[:, 5:])


def test_generation_samples_within_top_k(device):
    config = tiny("mag")
    model = build(config, device)
    prompt = token_ids(config, 3, 4, 0, device)
    g = torch.Generator(device=device).manual_seed(0)
    out = model.generate(prompt, max_new_tokens=3, temperature=1.0, top_k=1, generator=g)
    greedy = model.generate(prompt, max_new_tokens=3, temperature=0.0)
    torch.testing.assert_close(out.tokens, greedy.tokens)
    sampled = model.generate(prompt, max_new_tokens=5, temperature=2.0, top_k=5, generator=g).tokens
    assert sampled.shape == (3, 5) and int(sampled.min()) >= 0 and int(sampled.max()) < config.vocab_size


@pytest.mark.parametrize("variant", ["mac", "mag", "mal", "lmm", "swa"])
def test_state_size_stops_growing(device, variant):
    # Past the window and the persistent prefix, at the same phase of the MAC segment and of
    # the memory chunk, the state holds exactly as many numbers: memory per token is constant.
    config = tiny(variant)  # segment 8, chunk 4, window 8
    model = build(config, device)
    ids = token_ids(config, 1, 40, 0, device)
    with torch.no_grad():
        s24 = model(ids[:, :24]).state
        s40 = model(ids[:, 24:], s24).state
    assert state_numel(s24) == state_numel(s40)


def test_detached_state_continues_identically(device):
    config = tiny("mac")
    model = build(config, device)
    ids = token_ids(config, 1, 12, 0, device)
    first = model(ids[:, :7])
    a = model(ids[:, 7:], first.state).logits
    detached = first.state.detach()
    b = model(ids[:, 7:], detached).logits
    torch.testing.assert_close(a, b)
    assert not any(t.requires_grad for t in _tensors(detached))


def _tensors(obj):
    import dataclasses

    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


def test_rejects_bad_inputs(device):
    config = tiny("mac")
    model = build(config, device)
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 3), config.vocab_size, device=device))
    with pytest.raises(ValueError, match="seq >= 1"):
        model(torch.zeros(1, 0, dtype=torch.long, device=device))
    ids = token_ids(config, 2, 3, 0, device)
    # With runtime shape checking on, jaxtyping catches the mismatch first (a TypeError).
    with pytest.raises((ValueError, TypeError), match="labels"):
        model(ids, labels=ids[:, :2])
    with pytest.raises(ValueError, match="block states"):
        model(ids, TitansState((), 0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_model_overfits_a_fixed_batch(device, variant):
    torch.manual_seed(0)
    config = tiny(variant)
    model = TitansLM(config).to(device)
    ids = token_ids(config, 2, 17, 0, device)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = model(inputs, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_generate_feeds_one_token_per_step(device):
    config = tiny("mac")
    model = build(config, device)
    lengths: list[int] = []
    model.embedding.register_forward_hook(lambda mod, args, out: lengths.append(args[0].shape[1]))
    model.generate(token_ids(config, 1, 5, 0, device), max_new_tokens=4, temperature=0.0)
    assert lengths == [5, 1, 1, 1, 1]  # the prompt once, then never the prefix again


@pytest.mark.parametrize("variant", ["mac", "mag", "mal", "lmm"])
def test_models_with_some_memoryless_blocks_stream_exactly(device, variant):
    config = tiny(variant, depth=3, memory_layers=(1,), segment_len=3, window=3)
    model = build(config, device)
    ids = token_ids(config, 2, 9, 0, device)
    with torch.no_grad():
        torch.testing.assert_close(_stream(model, ids, [1, 2, 4, 7]), model(ids).logits, **TOL)


@pytest.mark.parametrize("variant", ["mac", "mag", "mal", "lmm"])
def test_bf16_autocast_runs_the_memory_in_float32(variant: str) -> None:
    # the training loop autocasts to bfloat16 on CUDA; CPU autocast takes the same code path
    config = tiny(variant, memory_checkpoint=True)
    model = build(config, torch.device("cpu")).float()  # mixed precision starts from float32 weights
    ids = token_ids(config, 2, 24, seed=0, device=torch.device("cpu"))
    full = model(ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits.float(), full, atol=0.15, rtol=0.05)  # bfloat16 rounding only
    memory = next(block.memory for block in model.blocks if getattr(block, "memory", None) is not None)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in memory.parameters())
    states = [block.memory for block in out.state.blocks if getattr(block, "memory", None) is not None]
    assert states  # every memory variant's blocks carry a memory state
    for state in states:  # the fast weights stayed in float32
        assert all(w.dtype == torch.float32 for w in state.memory.weights.values())
