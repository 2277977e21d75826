"""SlidingWindowAttention (streaming cache) and SegmentAttention against oracles."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_blocks.attention import KVCache, SegmentAttention, SlidingWindowAttention
from memory_blocks.persistent import PersistentMemory

FAST = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def randn(seed: int, *shape: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)


def plain_init(cls, *args, **kwargs) -> None:
    """The constructor without jaxtyping/beartype's argument check (as users run it)."""
    inspect.unwrap(cls.__init__)(cls.__new__(cls), *args, **kwargs)


def build(cls, seed: int, device: torch.device, *args, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs).to(device=device, dtype=torch.float64)


@FAST
@given(
    seq=st.integers(1, 30),
    window=st.integers(1, 10),
    num_prefix=st.integers(0, 3),
    rotary=st.booleans(),
    cuts=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_streaming_equals_parallel(device, seq, window, num_prefix, rotary, cuts, seed):
    """Pieces of any sizes (one token at a time included) with the cache equal one call."""
    dim, heads = 8, 2
    attn = build(SlidingWindowAttention, seed, device, dim, heads, window=window,
                 num_prefix=num_prefix, rotary=rotary)
    persistent = build(PersistentMemory, seed, device, num_prefix, dim, init_std=1.0)
    x = persistent(randn(seed, 2, seq, dim, device=device))
    total = x.shape[1]
    full, _ = attn(x)
    sizes = iter(cuts * total)
    first = min(total, num_prefix + next(sizes))
    out, cache = attn(x[:, :first])
    outs, pos = [out], first
    while pos < total:
        assert cache.position == pos
        assert cache.size <= num_prefix + window - 1
        new = min(next(sizes), total - pos)
        out, cache = attn(x[:, pos : pos + new], cache=cache)
        outs.append(out)
        pos += new
    assert cache.size <= num_prefix + window - 1 and cache.position == total
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-10)


@FAST
@given(seq=st.integers(2, 24), window=st.integers(1, 8), t=st.integers(0, 23),
       seed=st.integers(0, 2**31 - 1))
def test_module_is_causal(device, seq, window, t, seed):
    t = t % seq
    attn = build(SlidingWindowAttention, seed, device, 8, 2, window=window, num_prefix=1)
    x = randn(seed, 1, seq, 8, device=device)
    y = x.clone()
    y[:, t + 1 :] += randn(seed + 1, 1, seq - t - 1, 8, device=device)
    torch.testing.assert_close(attn(y)[0][:, : t + 1], attn(x)[0][:, : t + 1], rtol=0, atol=1e-12)


def test_backends_agree_and_every_parameter_learns(device):
    attn = build(SlidingWindowAttention, 0, device, 16, 4, window=5, num_prefix=2)
    persistent = build(PersistentMemory, 0, device, 2, 16)
    x = persistent(randn(0, 2, 23, 16, device=device))
    out, _ = attn(x)
    for backend in ("sdpa", "dense"):
        attn.backend = backend
        torch.testing.assert_close(attn(x)[0], out, rtol=1e-10, atol=1e-10)
    out.pow(2).sum().backward()
    for name, p in [*attn.named_parameters(), *persistent.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cache_is_frozen_and_validated():
    attn = SlidingWindowAttention(8, 2, window=3, num_prefix=1)
    x = torch.randn(2, 6, 8)
    _, cache = attn(x)
    assert isinstance(cache, KVCache) and cache.k.shape == (2, 2, 2, 4)
    detached = cache.detach()
    assert cache.k.requires_grad and not detached.k.requires_grad
    assert detached.position == cache.position == 6 and detached.size == cache.size == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cache.position = 0  # type: ignore[misc]
    with pytest.raises(ValueError, match="cache .batch, heads, dim_head."):
        attn(x[:1, :1], cache=cache)
    other = SlidingWindowAttention(8, 2, window=3, num_prefix=0)
    with pytest.raises(ValueError, match="prefix keys, expected num_prefix=0"):
        other(x[:, :1], cache=cache)
    narrow = SlidingWindowAttention(8, 2, window=2, num_prefix=1)
    with pytest.raises(ValueError, match="more than window - 1"):
        narrow(x[:, :1], cache=cache)
    with pytest.raises(ValueError, match="must hold the 3 prefix tokens"):
        SlidingWindowAttention(8, 2, window=3, num_prefix=3)(x[:, :2])
    with pytest.raises(ValueError, match="window must be >= 1"):
        SlidingWindowAttention(8, 2, window=0)
    with pytest.raises(ValueError, match="not divisible by heads"):
        SlidingWindowAttention(10, 3, window=2)
    with pytest.raises(ValueError, match="expected .batch, seq >= 1, 8."):
        attn(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="backend"):
        plain_init(SlidingWindowAttention, 8, 2, window=2, backend="fast")


def segment_oracle(attn: SegmentAttention, x, memory, persistent):
    """Each segment alone: causal attention over [persistent | memory_n | segment_n]."""
    segment, per, heads, dh = attn.segment, attn.memory_per_segment, attn.heads, attn.dim_head
    batch, seq, _ = x.shape
    outs = []
    for n, start in enumerate(range(0, seq, segment)):
        seg = x[:, start : start + segment]
        mem = memory[:, n * per : (n + 1) * per] if memory is not None else x[:, :0]
        pre = persistent if persistent is not None else x[:, :0]
        P, M, S = pre.shape[1], (per if memory is not None else 0), seg.shape[1]
        # Pad memory to M slots so positions stay P + slot; padded slots are masked below.
        mem_real = mem.shape[1]
        mem = torch.cat([mem, mem.new_zeros(batch, M - mem_real, mem.shape[2])], dim=1)
        ctx = torch.cat([pre, mem, seg], dim=1)

        def split(t):
            return t.view(batch, t.shape[1], heads, dh).transpose(1, 2)

        q = split(attn.to_q(seg))
        k, v = (split(t) for t in attn.to_kv(ctx).chunk(2, dim=-1))
        if attn.rotary is not None:
            q = attn.rotary(q, offset=P + M)
            positions = torch.arange(P + M + S, device=x.device)
            if attn.memory_positions == "aligned":  # slot m at token m's position
                positions[P : P + M] += M
            k = attn.rotary(k, positions=positions)
        r = torch.arange(S, device=x.device)[:, None]
        c = torch.arange(P + M + S, device=x.device)[None, :]
        slot = c - P
        mem_ok = (slot >= 0) & (slot < mem_real)
        if attn.memory_visibility == "causal":
            mem_ok = mem_ok & (slot <= r)
        elif attn.memory_visibility == "own":
            mem_ok = mem_ok & (slot == r)
        mask = (c < P) | ((slot < M) & mem_ok) | ((c >= P + M) & (c - P - M <= r))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        outs.append(attn.to_out(out.transpose(1, 2).reshape(batch, S, heads * dh)))
    return torch.cat(outs, dim=1)


@FAST
@given(
    seq=st.integers(1, 20),
    segment=st.integers(1, 6),
    num_persistent=st.integers(0, 3),
    use_memory=st.booleans(),
    visibility=st.sampled_from(["causal", "own", "all"]),
    rotary=st.booleans(),
    aligned=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_segment_attention_module_equals_per_segment_oracle(
    device, seq, segment, num_persistent, use_memory, visibility, rotary, aligned, seed
):
    dim = 8
    attn = build(SegmentAttention, seed, device, dim, 2, segment=segment,
                 memory_visibility=visibility, rotary=rotary,
                 memory_positions="aligned" if aligned else "prefix")
    x = randn(seed, 2, seq, dim, device=device)
    memory = randn(seed + 1, 2, seq, dim, device=device) if use_memory else None
    persistent = randn(seed + 2, 2, num_persistent, dim, device=device) if num_persistent else None
    out = attn(x, memory=memory, persistent=persistent)
    torch.testing.assert_close(out, segment_oracle(attn, x, memory, persistent), rtol=1e-10, atol=1e-10)


def test_segments_do_not_see_each_other(device):
    attn = build(SegmentAttention, 0, device, 8, 2, segment=4, memory_per_segment=2,
                 memory_visibility="all")
    x = randn(0, 1, 12, 8, device=device)
    memory = randn(1, 1, 6, 8, device=device)
    out = attn(x, memory=memory)
    x2, memory2 = x.clone(), memory.clone()
    x2[:, 4:8] += 1.0
    memory2[:, 2:4] += 1.0  # the memory of segment 1
    out2 = attn(x2, memory=memory2)
    torch.testing.assert_close(out2[:, :4], out[:, :4], rtol=0, atol=1e-12)
    torch.testing.assert_close(out2[:, 8:], out[:, 8:], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[:, 4:8], out[:, 4:8])


def test_segment_attention_validates():
    with pytest.raises(ValueError, match="segment must be >= 1"):
        SegmentAttention(8, 2, segment=0)
    with pytest.raises(ValueError, match="memory_per_segment .* must be <= segment"):
        SegmentAttention(8, 2, segment=2, memory_per_segment=3)
    with pytest.raises(ValueError, match="memory_visibility"):
        plain_init(SegmentAttention, 8, 2, segment=2, memory_visibility="some")
    with pytest.raises(ValueError, match="memory_positions must be one of"):
        plain_init(SegmentAttention, 8, 2, segment=2, memory_positions="middle")
    with pytest.raises(ValueError, match="aligned memory positions"):
        plain_init(SegmentAttention, 8, 2, segment=2, memory_per_segment=3, memory_visibility="all",
                   memory_positions="aligned")
    # jaxtyping catches the batch mismatch first in these tests; the plain forward raises.
    attn = SegmentAttention(8, 2, segment=2)
    forward = inspect.unwrap(SegmentAttention.forward)
    with pytest.raises(ValueError, match="memory must be .batch=2"):
        forward(attn, torch.randn(2, 4, 8), memory=torch.randn(1, 4, 8))
