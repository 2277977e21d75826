"""The synthetic tasks: deterministic by seed, exact structure, label masks, validation."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from titans.experiments.tasks import (
    IGNORE_INDEX,
    MQAR,
    TASKS,
    NeedleInHaystack,
    SelectiveCopy,
    make_task,
    masked_accuracy,
)
from titans.experiments.tasks.needle import NEEDLE, QUERY
from titans.experiments.tasks.selective_copy import BLANK, MARKER

from .helpers import SMALL


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TASKS.names())
def test_same_seed_same_batch_and_shapes(name: str, tmp_path: Path) -> None:
    options = {}
    if name == "text":  # the one task that reads the user's files
        (tmp_path / "text.txt").write_text(" ".join(str(i) for i in range(3000)))
        options["data"] = str(tmp_path / "text.txt")
    task = make_task(name, **options)
    a = task.batch(gen(3), 3, 40)
    b = task.batch(gen(3), 3, 40)
    c = task.batch(gen(4), 3, 40)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    for t in a:
        assert t.shape == (3, 40) and t.dtype == torch.long
    assert int(a[0].min()) >= 0 and int(a[0].max()) < task.vocab_size
    scored = a[1][a[1] != IGNORE_INDEX]
    assert scored.numel() > 0 and int(scored.min()) >= 0 and int(scored.max()) < task.vocab_size


@SMALL
@given(seed=st.integers(0, 2**16), pairs=st.integers(1, 6), extra=st.integers(0, 20), batch=st.integers(1, 3),
       at_end=st.booleans())
def test_mqar_structure(seed: int, pairs: int, extra: int, batch: int, at_end: bool) -> None:
    task = MQAR(vocab_size=32, num_pairs=pairs, queries_at_end=at_end)
    seq = 4 * pairs + extra
    ids, labels = task.batch(gen(seed), batch, seq)
    half = 16
    for b in range(batch):
        keys, values = ids[b, 0:2 * pairs:2], ids[b, 1:2 * pairs:2]
        assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < 32)).all()
        assert len(set(keys.tolist())) == pairs
        scored = (labels[b] != IGNORE_INDEX).nonzero().flatten()
        assert len(scored) == pairs and (scored >= 2 * pairs).all()  # queries only after the context
        tail = ids[b, 2 * pairs:]
        assert sorted(tail[tail != 0].tolist()) == sorted(keys.tolist())  # each key asked exactly once
        value_of = dict(zip(keys.tolist(), values.tolist()))
        for p in scored.tolist():
            assert labels[b, p].item() == value_of[ids[b, p].item()]
        if at_end:  # every query in the last 2N positions: each pair at least L - 4N tokens back
            assert (scored >= seq - 2 * pairs - 1).all()
            assert (ids[b, 2 * pairs:seq - 2 * pairs - 1] == 0).all()


def test_mqar_queries_at_end_validates_and_shuffles_the_order() -> None:
    with pytest.raises(ValueError, match="queries_at_end"):  # past the runtime type checker (the CLI has none)
        inspect.unwrap(MQAR.__init__)(object.__new__(MQAR), queries_at_end=1)
    ids, labels = MQAR(vocab_size=64, num_pairs=4, queries_at_end=True).batch(gen(0), 64, 64)
    first_keys = ids[:, 0:8:2]
    asked = ids[:, 56::2]
    assert (asked.sort(-1).values == first_keys.sort(-1).values).all()
    assert (asked != first_keys).any()  # not always asked in the order they were given


def test_mqar_needs_four_n_tokens() -> None:
    with pytest.raises(ValueError, match="4 \\* num_pairs"):
        MQAR(num_pairs=4).batch(gen(0), 1, 15)
    MQAR(num_pairs=4).batch(gen(0), 1, 16)
    with pytest.raises(ValueError, match="MQAR.num_pairs"):
        MQAR(vocab_size=8, num_pairs=4)


def test_mqar_distances_favour_short_gaps() -> None:
    _, labels = MQAR(vocab_size=64, num_pairs=2).batch(gen(0), 512, 256)
    positions = (labels != IGNORE_INDEX).nonzero()[:, 1] - 4
    assert (positions < 126).float().mean() > 0.5  # power law: the first half of the tail is likelier


@SMALL
@given(seed=st.integers(0, 2**16), seq=st.integers(5, 48), depth=st.floats(0, 1))
def test_needle_sits_at_the_requested_depth(seed: int, seq: int, depth: float) -> None:
    task = NeedleInHaystack(vocab_size=40, depth=depth)
    ids, labels = task.batch(gen(seed), 2, seq)
    start = round(depth * (seq - 5))
    assert (ids[:, start] == NEEDLE).all()
    assert (ids[:, -2] == QUERY).all() and torch.equal(ids[:, -1], ids[:, start + 1])
    assert torch.equal(labels[:, -1], ids[:, start + 2])
    assert (labels[:, :-1] == IGNORE_INDEX).all()
    haystack = torch.cat([ids[:, :start], ids[:, start + 3:-2]], dim=1)
    low, high = task.noise_range
    assert ((haystack >= low) & (haystack < high)).all()  # noise never looks like a key or value


def test_needle_random_depths_vary_and_validate() -> None:
    ids, _ = NeedleInHaystack().batch(gen(0), 16, 64)
    starts = (ids[:, :-2] == NEEDLE).nonzero()[:, 1]
    assert len(starts) == 16 and len(set(starts.tolist())) > 1
    with pytest.raises(ValueError, match="NeedleInHaystack.depth"):
        NeedleInHaystack(depth=1.5)
    with pytest.raises(ValueError, match="seq_len"):
        NeedleInHaystack().batch(gen(0), 1, 4)


@SMALL
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), extra=st.integers(0, 10))
def test_selective_copy_targets_are_the_scattered_tokens_in_order(seed: int, n: int, extra: int) -> None:
    seq = 2 * n + extra
    ids, labels = SelectiveCopy(vocab_size=20, num_tokens=n).batch(gen(seed), 3, seq)
    region = seq - n
    for b in range(3):
        scattered = ids[b, :region][ids[b, :region] != BLANK]
        assert len(scattered) == n and (scattered >= 2).all()
        assert ids[b, region] == MARKER
        assert labels[b, region:].tolist() == scattered.tolist()
        assert (labels[b, :region] == IGNORE_INDEX).all()
        assert ids[b, region + 1:].tolist() == scattered[:-1].tolist()  # teacher forcing


def test_selective_copy_validates() -> None:
    with pytest.raises(ValueError, match="2 \\* num_tokens"):
        SelectiveCopy(num_tokens=8).batch(gen(0), 1, 15)
    with pytest.raises(ValueError, match="SelectiveCopy.num_tokens"):
        SelectiveCopy(num_tokens=0)


def test_make_task_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope")
    with pytest.raises(ValueError, match="unknown options \\['pairs'\\]"):
        make_task("mqar", pairs=3)
    assert make_task("mqar", num_pairs=3) == MQAR(num_pairs=3)
    assert dataclasses.replace(make_task("needle"), depth=0.5).depth == 0.5


def test_masked_accuracy_counts_scored_positions_only() -> None:
    labels = torch.tensor([[IGNORE_INDEX, 2, 1]])
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 3] = logits[0, 1, 2] = logits[0, 2, 0] = 1.0
    assert masked_accuracy(logits, labels) == 0.5
    with pytest.raises(ValueError, match="no position"):
        masked_accuracy(logits, torch.full((1, 3), IGNORE_INDEX))
