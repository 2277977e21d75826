"""Fuzz of the model's entry points: every outcome is "accepted, and every output finite" or
"refused with one ValueError/TypeError that names the field or argument"; anything else (an
internal error, a non-finite output from an accepted input) fails.

Entry points: ``TitansConfig`` (random field values, valid and invalid: wrong types, out of
range, inf/nan, strings for bools), ``TitansLM.forward`` (id dtypes, shapes, ranges, labels),
``TitansLM.generate`` (sampling arguments) and states passed between models of other configs
or batch sizes. Tiny sizes. The library's own checks answer (jaxtyping's runtime checks,
which the tests otherwise run with, are off inside the fuzz). Every outcome is recorded with
``hypothesis.event``: ``pytest --hypothesis-show-statistics`` prints the counts.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from titans import TitansConfig, TitansLM
from tests.titans.test_config import library_checks_only

FIELDS = {f.name for f in dataclasses.fields(TitansConfig)}
NAN, INF = float("nan"), float("inf")
VARIANTS = ("mac", "mag", "mal", "lmm", "swa", "transformer")

#: A tiny config every drawn one starts from.
BASE = dict(variant="mag", vocab_size=11, dim=16, depth=1, heads=2, ffn_hidden=12, memory_expansion=2.0,
            chunk_size=2, window=4, segment_len=4, num_persistent=1, max_seq_len=32)

#: Per field: values that may be valid (alone; combinations may still conflict) and values
#: that are not (wrong kind, out of range, inf/nan).
VALUES: dict[str, tuple[list, list]] = {
    "variant": (list(VARIANTS), ["mamba", 3, None, ["mac"]]),
    "vocab_size": ([5, 11], [0, -1, 11.0, "11", True]),
    "dim": ([8, 16], [0, -8, 16.0, "16", True]),
    "depth": ([1, 2], [0, 1.5, None]),
    "heads": ([1, 2], [0, 3, 2.5, False]),
    "dim_head": ([None, 4, 8], [3, 0, 4.0]),
    "ffn_hidden": ([None, 12], [0, -4, "12"]),
    "tie_embeddings": ([True, False], ["no", "false", 0, 1, None]),
    "norm_eps": ([1e-6, 1e-3, 1.0], [0.0, -1e-6, INF, NAN, 1e-300, 2.0, "1e-6", True]),
    "memory_model": (["mlp", "linear", "gated_mlp"], ["transformer", 1, None]),
    "memory_depth": ([1, 2], [0, 2.0]),
    "memory_expansion": ([0.5, 1, 4.0, 64.0], [0.0, -1.0, INF, NAN, 1e6, "2", None]),
    "memory_activation": (["gelu", "silu"], ["swish", 0]),
    "memory_heads": ([None, 1, 2], [3, 0, 1.0]),
    "optimizer": (["momentum", "gd"], ["adam", None]),
    "objective": (["squared_error", "huber", "lp", "dot_product"], ["cross_entropy", 1]),
    "objective_kwargs": ([{}], [None, [1], {"p": NAN}, {"delta": -1.0}, {"p": True}, {1: 2.0}]),
    "lr_gate": (["learned", 1e-3, 0.5, 1.0], [0.0, 10.0, NAN, INF, -1.0, None, True, "random"]),
    "momentum_gate": (["learned", None, 0.0, 0.5, 0.99], [1.0, 2.0, -0.1, NAN, "x", False]),
    "decay_gate": (["learned", None, 0.0, 0.5, 1.0], [5.0, -3.0, INF, "none"]),
    "lr_gate_init": ([None, 0.05, 0.3], [0.0, 1e-300, NAN, INF, -0.1, "0.1"]),
    "lr_gate_max": ([None, 0.6, 1.0], [0.0, 1e300, 2.0, NAN, INF]),
    "decay_gate_init": ([None, 1e-4, 0.05], [0.0, -0.1, 2.0, NAN, INF, "0.1"]),
    "decay_gate_max": ([None, 1e-3, 1.0], [0.0, 2.0, NAN, INF, True]),
    "step_scale": (["normalized", "literal"], ["adaptive", None]),
    "forget_target": (["init", "zero"], ["one", 0]),
    "retention": (["l2", "lq", "kl", "elastic_net"], ["l1", None]),
    "retention_kwargs": ([{}], [None, [1], {"q": NAN}, {1: 2.0}]),
    "retention_readout": (["token", "chunk"], ["block", None, True]),
    "feature_map": (["identity", "polynomial"], ["cubic", 0]),
    "feature_map_kwargs": ([{}], [None, {"degree": INF}, {"degree": 0}]),
    "omega_window": ([1, 2], [0, 1.5, "2"]),
    "per_tensor_lr": ([True, False], ["true", 1]),
    "chunk_size": ([1, 2, 4], [0, -2, 2.0]),
    "conv_kernel": ([0, 2, 4], [-1, 2.0]),
    "memory_layers": ([None, (0,), [0]], [(5,), "0", 1, (0, 0), (True,)]),
    "memory_checkpoint": ([True, False], ["yes", None]),
    "memory_block_chunks": ([1, 4], [0, 4.0]),
    "window": ([1, 3, 8], [0, -1, 3.0]),
    "segment_len": ([1, 3, 8], [0, 3.5]),
    "num_persistent": ([0, 2], [-1, 2.0]),
    "num_memory_tokens": ([None, 0, 1], [-1, 100, 1.0]),
    "combine": ([None, "normalized", "product", "sigmoid"], ["sum", 3]),
    "mac_write": (["attention", "input"], ["output", None]),
    "mac_memory_positions": (["prefix", "aligned"], ["suffix"]),
    "mac_memory_visibility": (["causal", "own"], ["all"]),
    "mac_retrieve_query": (["shared", "separate"], ["learned"]),
    "mac_memory_norm": (["none", "gain", "rms", "rms_zero"], ["layer", 1]),
    "max_seq_len": ([32, 64], [0, 64.0]),
    "rotary_base": ([10000.0, 2.0], [1.0, INF, NAN, "1e4", True]),
    "attention_backend": (["blocked", "dense"], ["cuda", None]),
}
OBJECTIVE_KWARGS = {"squared_error": [{}], "dot_product": [{}], "huber": [{}, {"delta": 0.5}, {"delta": 100.0}],
                    "lp": [{}, {"p": 1.5}, {"p": 4.0}, {"p": 6.0}, {"p": 1e6}]}

_REFUSAL = re.compile(r"^(TitansLM\.generate|TitansLM|TitansConfig(\.(?P<field>\w+))?): ")


def test_the_fuzz_covers_every_config_field() -> None:
    assert set(VALUES) == FIELDS


def _refusal(err: Exception, names: set[str]) -> str:
    """The argument a refusal names; fails unless it is one clear ValueError/TypeError."""
    assert isinstance(err, (ValueError, TypeError)), repr(err)
    message = str(err)
    match = _REFUSAL.match(message)
    assert match is not None and "\n" not in message, message
    named = match.group("field") or next((n for n in sorted(names) if n in message), None)
    assert named in names, message
    return named


def _assert_finite(out, where: str) -> None:
    assert torch.isfinite(out.logits).all(), f"{where}: non-finite logits"
    if out.loss is not None:
        assert math.isfinite(float(out.loss)), f"{where}: non-finite loss {out.loss}"


@st.composite
def config_fields(draw: st.DrawFn) -> dict:
    fields = {**BASE, "variant": draw(st.sampled_from(VARIANTS))}
    for name in sorted(VALUES):
        if draw(st.integers(0, 5)) == 0:  # about one field in six changed, each to a valid value
            fields[name] = draw(st.sampled_from(VALUES[name][0]))
    fields["objective_kwargs"] = draw(st.sampled_from(OBJECTIVE_KWARGS[fields.get("objective", "squared_error")]))
    for _ in range(draw(st.integers(0, 2))):  # and up to two to a value outside its kind or range
        name = draw(st.sampled_from(sorted(VALUES)))
        fields[name] = draw(st.sampled_from(VALUES[name][1]))
    return fields


@settings(max_examples=400)
@given(fields=config_fields(), seq=st.integers(1, 9), seed=st.integers(0, 3))
def test_config_fuzz(fields: dict, seq: int, seed: int) -> None:
    with library_checks_only():
        try:
            config = TitansConfig(**fields)
        except (ValueError, TypeError) as err:
            event(f"config: refused, naming {_refusal(err, FIELDS)}")
            return
        torch.manual_seed(seed)
        model = TitansLM(config)
        ids = torch.randint(0, config.vocab_size, (2, seq))
        with torch.no_grad():
            out = model(ids, labels=ids)
            _assert_finite(out, f"an accepted config {fields}")
        event(f"config: accepted {config.variant}, finite")


_MODELS: dict[tuple, TitansLM] = {}


def _model(variant: str, **overrides: object) -> TitansLM:
    key = (variant, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = TitansLM(TitansConfig(**{**BASE, "variant": variant, **overrides})).eval()
    return _MODELS[key]


IDS_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float64]


@st.composite
def id_tensors(draw: st.DrawFn, vocab: int, shape: tuple[int, ...], *, labels: bool = False) -> object:
    if draw(st.integers(0, 15)) == 0:
        return draw(st.sampled_from([None, [[1, 2]], 3])) if labels else [[1, 2]]
    dtype = draw(st.sampled_from(IDS_DTYPES[:2] * 6 + IDS_DTYPES[2:]))
    low = draw(st.sampled_from([0] * 6 + [-1, -100] if labels else [0] * 6 + [-2]))
    high = draw(st.sampled_from([vocab] * 6 + [vocab + 1]))
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype)
    if dtype == torch.uint8:
        low = 0
    values = torch.randint(low, high, shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    if labels and draw(st.booleans()):  # some positions ignored; maybe all of them
        values = values.masked_fill(torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5, -100)
        if draw(st.integers(0, 5)) == 0:
            values = torch.full(shape, -100)
    return values.to(dtype)


@settings(max_examples=500)
@given(data=st.data(), variant=st.sampled_from(VARIANTS), batch=st.sampled_from([1, 1, 2, 2, 0]),
       seq=st.integers(0, 6))
def test_forward_input_fuzz(data: st.DataObject, variant: str, batch: int, seq: int) -> None:
    model = _model(variant)
    vocab = model.config.vocab_size
    ids = data.draw(id_tensors(vocab, (batch, seq)), label="input_ids")
    label_shape = data.draw(st.sampled_from([(batch, seq)] * 5 + [(batch, seq + 1), (seq,)]))
    labels = data.draw(st.one_of(st.none(), id_tensors(vocab, label_shape, labels=True)), label="labels")
    with library_checks_only(), torch.no_grad():
        try:
            out = model(ids, labels=labels)
        except (ValueError, TypeError) as err:
            event(f"forward: refused, naming {_refusal(err, {'input_ids', 'labels'})}")
            return
    _assert_finite(out, "an accepted input")
    assert isinstance(ids, torch.Tensor) and ids.dtype in (torch.int64, torch.int32)
    assert int(ids.min()) >= 0 and int(ids.max()) < vocab
    if labels is not None:
        scored = labels[labels != -100]
        assert scored.numel() and int(scored.min()) >= 0 and int(scored.max()) < vocab
    event(f"forward: accepted, finite ({'with' if labels is not None else 'no'} labels)")


GENERATE_ARGS = {
    "max_new_tokens": [0, 1, 3] * 4 + [-1, 2.0, True, None],
    "temperature": [0.0, 0.7, 1, 1e-30, 1e30] * 3 + [NAN, INF, -1.0, "hot", True, None],
    "top_k": [None, 1, 3, 1000] * 3 + [0, -1, 2.5, True],
    "generator": ["seeded", None] * 4 + [0, "cuda"],
}


@settings(max_examples=250)
@given(data=st.data(), variant=st.sampled_from(VARIANTS), batch=st.integers(1, 2))
def test_generate_fuzz(data: st.DataObject, variant: str, batch: int) -> None:
    model = _model(variant)
    args = {name: data.draw(st.sampled_from(values), label=name) for name, values in GENERATE_ARGS.items()}
    if args["generator"] == "seeded":
        args["generator"] = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, 3), generator=torch.Generator().manual_seed(0))
    with library_checks_only():
        try:
            out = model.generate(ids, **args)
        except (ValueError, TypeError) as err:
            event(f"generate: refused, naming {_refusal(err, set(GENERATE_ARGS))}")
            return
    assert out.tokens.shape == (batch, args["max_new_tokens"])
    assert out.tokens.numel() == 0 or (int(out.tokens.min()) >= 0 and int(out.tokens.max()) < model.config.vocab_size)
    event("generate: accepted, tokens in range")


#: Models whose states must not be mixed (structures that happen to match included).
STATE_MODELS = [
    ("mac", {}), ("mac", {"segment_len": 2}), ("mag", {}), ("mal", {}), ("lmm", {"chunk_size": 4}),
    ("lmm", {}), ("swa", {}), ("swa", {"window": 2}), ("transformer", {}), ("mag", {"decay_gate": None}),
]


@settings(max_examples=150)
@given(maker=st.sampled_from(STATE_MODELS), user=st.sampled_from(STATE_MODELS), batches=st.sampled_from(
    [(1, 1), (2, 2), (1, 2)]), first=st.integers(1, 5), then=st.integers(1, 5), detach=st.booleans())
def test_state_fuzz(maker: tuple, user: tuple, batches: tuple[int, int], first: int, then: int,
                    detach: bool) -> None:
    producer, consumer = _model(maker[0], **maker[1]), _model(user[0], **user[1])
    ids = torch.randint(0, 11, (2, first + then), generator=torch.Generator().manual_seed(first))
    with library_checks_only(), torch.no_grad():
        state = producer(ids[: batches[0], :first]).state
        state = state.detach() if detach else state
        try:
            out = consumer(ids[: batches[1], first:], state)
        except (ValueError, TypeError) as err:
            named = _refusal(err, {"state"})
            assert maker != user or batches[0] != batches[1], f"a matching state was refused: {err}"
            event(f"state: refused ({'another config' if maker != user else 'another batch'}), naming {named}")
            return
        assert maker == user and batches[0] == batches[1], "a state of another model or batch was accepted"
        _assert_finite(out, "a continued state")
        whole = consumer(ids[: batches[1]]).logits[:, first:]
    torch.testing.assert_close(out.logits, whole, rtol=1e-4, atol=1e-4)  # streaming equals one call
    event("state: accepted, equals one call")


@pytest.mark.parametrize("name", ["input_ids", "labels", "state", "max_new_tokens", "temperature", "top_k"])
def test_the_refusal_classifier_needs_the_name(name: str) -> None:
    assert _refusal(ValueError(f"TitansLM: {name} must be ..."), {name}) == name
    with pytest.raises(AssertionError):
        _refusal(ValueError("something went wrong"), {name})
    with pytest.raises(AssertionError):
        _refusal(RuntimeError(f"TitansLM: {name}"), {name})
