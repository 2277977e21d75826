"""TitansLM: causality, streaming equals the parallel forward, gradients, generation.

Every property is checked for every variant, on small random configs, in float64.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from titans import TitansConfig, TitansLM, TitansState
from titans.model import check_sampling
from tests.titans.helpers import SMALL, VARIANTS, build, small_configs, state_numel, tiny, token_ids
from tests.titans.test_config import library_checks_only

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
    with pytest.raises(ValueError, match="no config signature"):
        model(ids, TitansState((), 0))
    with pytest.raises(ValueError, match="block states"):  # the right signature, the wrong blocks
        model(ids, TitansState((), 0, model.signature, 2))


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool, torch.int16])
def test_token_ids_of_another_dtype_are_refused(dtype: torch.dtype) -> None:
    model = build(tiny("mag"), torch.device("cpu"))
    ids = torch.ones(1, 3, dtype=dtype)
    # jaxtyping (runtime checking in the tests) may refuse first; either way a TypeError naming input_ids
    with pytest.raises(TypeError, match="input_ids"):
        model(ids)
    with library_checks_only():  # what a user meets: the model's own check, no cast
        with pytest.raises(TypeError, match=rf"^TitansLM: input_ids must be an integer tensor .*, got {dtype}$"):
            model(ids)
        with pytest.raises(TypeError, match=rf"^TitansLM: labels must be an integer tensor .*, got {dtype}$"):
            model(torch.ones(1, 3, dtype=torch.long), labels=ids)
        with pytest.raises(TypeError, match="^TitansLM: input_ids must be a tensor of token ids, got list$"):
            model([[1, 2]])


def test_int32_ids_and_labels_work_like_int64() -> None:
    config = tiny("lmm")
    model = build(config, torch.device("cpu"))
    ids = token_ids(config, 2, 5, 0, torch.device("cpu"))
    a, b = model(ids, labels=ids), model(ids.int(), labels=ids.int())
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


def test_labels_out_of_range_and_all_ignored_are_refused() -> None:
    config = tiny("mal")
    model = build(config, torch.device("cpu"))
    ids = token_ids(config, 2, 4, 0, torch.device("cpu"))
    for bad in (config.vocab_size, -1, -99):
        labels = ids.clone()
        labels[1, 2] = bad
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, vocab_size=64\) or -100, got {bad}"):
            model(ids, labels=labels)
    with pytest.raises(ValueError, match="every label is -100"):
        model(ids, labels=torch.full_like(ids, -100))
    labels = torch.full_like(ids, -100)
    labels[0, 3] = 5  # one scored position is enough
    assert torch.isfinite(model(ids, labels=labels).loss)
    with pytest.raises(ValueError, match=r"batch >= 1"):
        model(ids[:0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=2.0), TypeError, "max_new_tokens"),
        (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
        (dict(generator=0), TypeError, "generator"),
    ],
)
def test_generate_refuses_sampling_arguments_out_of_range(kwargs, error, match) -> None:
    config = tiny("swa")
    model = build(config, torch.device("cpu"))
    args = {"max_new_tokens": 2, **kwargs}
    # a value of the wrong kind may meet the tests' runtime type checker first: a TypeError naming it too
    with pytest.raises(error, match=rf"TitansLM.generate: {match}" if error is ValueError else match):
        model.generate(token_ids(config, 1, 3, 0, torch.device("cpu")), **args)
    full = {"max_new_tokens": 2, "temperature": 1.0, "top_k": None, "generator": None, **kwargs}
    with pytest.raises(error, match=rf"TitansLM.generate: {match}"):  # the library's own check
        check_sampling("TitansLM.generate", full["max_new_tokens"], full["temperature"], full["top_k"],
                       full["generator"])


def test_a_tiny_temperature_samples_the_greedy_token() -> None:
    config = tiny("swa")
    model = build(config, torch.device("cpu"))
    ids = token_ids(config, 2, 3, 0, torch.device("cpu"))
    greedy = model.generate(ids, 3, temperature=0.0).tokens
    assert torch.equal(model.generate(ids, 3, temperature=1e-30, generator=torch.Generator().manual_seed(0)).tokens,
                       greedy)


@pytest.mark.parametrize(
    ("made_by", "used_by", "fields"),
    [
        (tiny("mag"), tiny("mal"), ["variant"]),
        (tiny("lmm", chunk_size=4), tiny("lmm", chunk_size=2), ["chunk_size"]),
        (tiny("mac", segment_len=8), tiny("mac", segment_len=4), ["segment_len"]),
        (tiny("mag", window=8, decay_gate=None), tiny("mag", window=4), ["decay_gate", "window"]),
    ],
)
def test_a_state_of_another_config_is_refused_naming_the_fields(made_by, used_by, fields) -> None:
    cpu = torch.device("cpu")
    ids = token_ids(made_by, 2, 5, 0, cpu)
    state = build(made_by, cpu)(ids).state
    with pytest.raises(ValueError, match="belongs to a model of another config") as info:
        build(used_by, cpu)(ids, state)
    message = str(info.value)
    for name in fields:
        assert f"{name}={getattr(made_by, name)!r} (model: {getattr(used_by, name)!r})" in message
    assert message.count("(model:") == len(fields)


def test_states_keep_their_signature_and_batch_and_speed_knobs_may_differ() -> None:
    cpu = torch.device("cpu")
    config = tiny("mac")
    model = build(config, cpu)
    ids = token_ids(config, 2, 5, 0, cpu)
    state = model(ids[:, :3]).state
    assert state.signature == model.signature and state.batch == 2
    detached = state.detach()
    assert (detached.signature, detached.batch, detached.position) == (state.signature, 2, 3)
    with pytest.raises(ValueError, match="continues 2 sequences, input_ids has batch 1"):
        model(ids[:1, 3:], detached)
    fast = build(dataclasses.replace(config, memory_checkpoint=True, memory_block_chunks=2), cpu)
    with torch.no_grad():
        torch.testing.assert_close(fast(ids[:, 3:], detached).logits, model(ids[:, 3:], detached).logits)
    with pytest.raises(TypeError, match="state"):
        model(ids, state=(state,))
