"""sliding_window_attention, sliding_window_decode and segment_attention against oracles.

The oracles are written from the visibility rules, one query at a time (a softmax over the
list of keys the rule allows), independent of the blocked layout under test.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memory_blocks.functional.attention as A
from memory_blocks.functional.attention import (
    segment_attention,
    sliding_window_attention,
    sliding_window_decode,
)

# The device fixture is stateless, so sharing it across hypothesis examples is safe.
FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(FAST, max_examples=8)  # for the properties that run autograd per example


def randn(seed: int, *shape: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(device) for s in shape]


def qkv(seed: int, batch: int, heads: int, seq: int, dh: int, device: torch.device):
    return randn(seed, *[(batch, heads, seq, dh)] * 3, device=device)


def attend(q_i, keys, values, scale):
    """Softmax attention of queries ``(batch, heads, dh)`` over an explicit key list."""
    scores = torch.einsum("bhd,bhjd->bhj", q_i, keys) * scale
    return torch.einsum("bhj,bhjd->bhd", scores.softmax(-1), values)


def swa_reference(q, k, v, window, num_prefix, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    for i in range(q.shape[2]):
        js = [j for j in range(i + 1) if j < num_prefix or j > i - window]
        out[:, :, i] = attend(q[:, :, i], k[:, :, js], v[:, :, js], scale)
    return out


def segment_reference(q, k, v, segment, pk, pv, mk, mv, per, visibility, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    for t in range(q.shape[2]):
        n, r = divmod(t, segment)
        shown = {"all": lambda m: True, "causal": lambda m: m <= r, "own": lambda m: m == r}[visibility]
        mem = [u for u in range(mk.shape[2]) if u // per == n and shown(u % per)]
        own = [j for j in range(n * segment, t + 1)]
        keys = torch.cat([pk, mk[:, :, mem], k[:, :, own]], dim=2)
        values = torch.cat([pv, mv[:, :, mem], v[:, :, own]], dim=2)
        out[:, :, t] = attend(q[:, :, t], keys, values, scale)
    return out


sizes = st.tuples(
    st.integers(1, 2), st.integers(1, 3), st.integers(1, 40), st.sampled_from([1, 4, 8])
)


@FAST
@given(
    sizes=sizes,
    window=st.integers(1, 45),
    prefix_frac=st.floats(0, 1),
    block=st.one_of(st.none(), st.integers(1, 16)),
    chunk=st.sampled_from([1, 300, 1 << 20]),
    backend=st.sampled_from(["blocked", "sdpa", "dense"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_sliding_window_equals_reference(
    device, sizes, window, prefix_frac, block, chunk, backend, seed, monkeypatch
):
    batch, heads, seq, dh = sizes
    num_prefix = int(prefix_frac * seq)
    q, k, v = qkv(seed, batch, heads, seq, dh, device)
    # A small chunk budget forces the blocked path through several chunks of blocks.
    monkeypatch.setattr(A, "_CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(A, "_CHUNK_ELEMENTS_ACCELERATOR", chunk)
    out = sliding_window_attention(
        q, k, v, window=window, num_prefix=num_prefix, backend=backend, block=block
    )
    ref = swa_reference(q, k, v, window, num_prefix)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@FAST
@given(sizes=sizes, extra=st.integers(0, 5), seed=st.integers(0, 2**31 - 1))
def test_full_window_equals_causal_sdpa(device, sizes, extra, seed):
    batch, heads, seq, dh = sizes
    q, k, v = qkv(seed, batch, heads, seq, dh, device)
    out = sliding_window_attention(q, k, v, window=seq + extra)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@FEW
@given(
    seq=st.integers(2, 30),
    window=st.integers(1, 12),
    num_prefix=st.integers(0, 3),
    scale=st.floats(0.1, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradients_and_scale_match_dense(device, seq, window, num_prefix, scale, seed):
    num_prefix = min(num_prefix, seq)
    q, k, v = qkv(seed, 1, 2, seq, 4, device)
    grads = []
    for backend in ("blocked", "dense"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = sliding_window_attention(
            *leaves, window=window, num_prefix=num_prefix, scale=scale, backend=backend
        )
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for blocked, dense in zip(*grads):
        torch.testing.assert_close(blocked, dense, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        sliding_window_attention(q, k, v, window=window, num_prefix=num_prefix, scale=scale),
        swa_reference(q, k, v, window, num_prefix, scale),
    )


@FAST
@given(
    seq=st.integers(2, 30),
    window=st.integers(1, 10),
    num_prefix=st.integers(0, 3),
    t=st.integers(0, 29),
    seed=st.integers(0, 2**31 - 1),
)
def test_only_visible_keys_matter(device, seq, window, num_prefix, t, seed):
    """Causality and the window: changing a key/value/query no query may see changes nothing."""
    num_prefix, t = min(num_prefix, seq), t % seq
    q, k, v = qkv(seed, 1, 2, seq, 4, device)
    (noise,) = randn(seed + 1, (1, 2, seq, 4), device=device)
    out = sliding_window_attention(q, k, v, window=window, num_prefix=num_prefix)
    # Future positions: nothing at or before t may change.
    future = torch.arange(seq, device=device) > t
    q2, k2, v2 = (torch.where(future[:, None], x + noise, x) for x in (q, k, v))
    out2 = sliding_window_attention(q2, k2, v2, window=window, num_prefix=num_prefix)
    torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], rtol=0, atol=1e-12)
    # Keys outside the window and the prefix: query t must not change.
    pos = torch.arange(seq, device=device)
    hidden = (pos >= num_prefix) & (pos <= t - window)
    k3, v3 = (torch.where(hidden[:, None], x + noise, x) for x in (k, v))
    out3 = sliding_window_attention(q, k3, v3, window=window, num_prefix=num_prefix)
    torch.testing.assert_close(out3[:, :, t], out[:, :, t], rtol=0, atol=1e-12)


@FAST
@given(
    seq=st.integers(1, 40),
    window=st.integers(1, 12),
    num_prefix=st.integers(0, 4),
    cuts=st.lists(st.integers(1, 14), min_size=1, max_size=8),
    seed=st.integers(0, 2**31 - 1),
)
def test_decode_with_bounded_context_equals_parallel(device, seq, window, num_prefix, cuts, seed):
    """Feeding pieces against ``[prefix | last window-1 keys | new]`` equals one call."""
    num_prefix = min(num_prefix, seq)
    q, k, v = qkv(seed, 2, 2, seq, 4, device)
    full = sliding_window_attention(q, k, v, window=window, num_prefix=num_prefix)
    pos, outs = num_prefix, [full[:, :, :num_prefix]]
    cut_iter = iter(cuts * seq)
    while pos < seq:
        new = min(next(cut_iter), seq - pos)
        start = max(num_prefix, pos - (window - 1))
        ctx = torch.cat([torch.arange(num_prefix), torch.arange(start, pos + new)]).to(device)
        assert ctx.numel() <= num_prefix + window - 1 + new
        out = sliding_window_decode(
            q[:, :, pos : pos + new], k[:, :, ctx], v[:, :, ctx],
            window=window, num_prefix=num_prefix,
        )
        outs.append(out)
        pos += new
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=1e-10, atol=1e-10)


@FAST
@given(
    sizes=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 30), st.sampled_from([1, 4])),
    segment=st.integers(1, 9),
    num_prefix=st.integers(0, 3),
    per=st.integers(1, 9),
    memory_mode=st.sampled_from(["none", "full", "short_last"]),
    visibility=st.sampled_from(["causal", "own", "all"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_segment_attention_equals_reference(
    device, sizes, segment, num_prefix, per, memory_mode, visibility, seed
):
    batch, heads, seq, dh = sizes
    if visibility != "all":
        per = min(per, segment)
    segments = -(-seq // segment)
    num_memory = {"none": 0, "full": segments * per, "short_last": (segments - 1) * per + 1}
    num_memory = num_memory[memory_mode]
    q, k, v = qkv(seed, batch, heads, seq, dh, device)
    pk, pv, mk, mv = randn(
        seed + 1, *[(batch, heads, num_prefix, dh)] * 2, *[(batch, heads, num_memory, dh)] * 2,
        device=device,
    )
    out = segment_attention(
        q, k, v, segment=segment,
        prefix_k=pk if num_prefix else None, prefix_v=pv if num_prefix else None,
        memory_k=mk if num_memory else None, memory_v=mv if num_memory else None,
        memory_per_segment=per, memory_visibility=visibility,
    )
    ref = segment_reference(q, k, v, segment, pk, pv, mk, mv, per, visibility)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@FEW
@given(seq=st.integers(2, 24), segment=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_segment_attention_hides_unseen_memory(device, seq, segment, seed):
    """Aligned causal memory (MAC's h_t): token t never sees h_u for u > t or another segment's."""
    q, k, v, mk, mv = randn(seed, *[(1, 2, seq, 4)] * 5, device=device)
    mk, mv = mk.requires_grad_(), mv.requires_grad_()
    out = segment_attention(q, k, v, segment=segment, memory_k=mk, memory_v=mv)
    for t in range(seq):
        gk, gv = torch.autograd.grad(out[:, :, t].sum(), (mk, mv), retain_graph=True)
        n = t // segment
        u = torch.arange(seq, device=device)
        seen = (u // segment == n) & (u <= t)
        assert (gk[:, :, ~seen] == 0).all() and (gv[:, :, ~seen] == 0).all()
        assert (gv[:, :, seen] != 0).any()
    # Same with "all": the whole own segment is seen, other segments are not.
    out = segment_attention(q, k, v, segment=segment, memory_k=mk, memory_v=mv, memory_visibility="all")
    (gv,) = torch.autograd.grad(out[:, :, 0].sum(), (mv,))
    assert (gv[:, :, segment:] == 0).all() and (gv[:, :, : min(segment, seq)] != 0).any()


def test_flex_backend_is_explicit(device):
    q, k, v = qkv(0, 1, 2, 300, 16, device)
    if device.type != "cuda":
        with pytest.raises(ValueError, match="flex.*CUDA"):
            sliding_window_attention(q, k, v, window=64, backend="flex")
        return
    q, k, v = (t.float() for t in (q, k, v))
    out = sliding_window_attention(q, k, v, window=64, num_prefix=5, backend="flex")
    ref = sliding_window_attention(q, k, v, window=64, num_prefix=5, backend="dense")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_long_input_blocked_equals_dense(device):
    """Several chunks of many blocks, a prefix, a partial last block."""
    q, k, v = qkv(1, 1, 2, 1500, 8, device)
    out = sliding_window_attention(q, k, v, window=100, num_prefix=7)
    ref = sliding_window_attention(q, k, v, window=100, num_prefix=7, backend="dense")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# Bad input. Shape mismatches are caught by jaxtyping when runtime checking is on (as in
# these tests); the unwrapped function shows the ValueError users get without it.
swa_plain = inspect.unwrap(sliding_window_attention)
decode_plain = inspect.unwrap(sliding_window_decode)
segment_plain = inspect.unwrap(segment_attention)


def test_bad_window_prefix_backend_raise():
    q, k, v = qkv(0, 1, 1, 5, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match="window must be >= 1"):
        sliding_window_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match=r"num_prefix \(6\) exceeds seq \(5\)"):
        sliding_window_attention(q, k, v, window=2, num_prefix=6)
    with pytest.raises(ValueError, match="num_prefix must be >= 0"):
        sliding_window_attention(q, k, v, window=2, num_prefix=-1)
    with pytest.raises(ValueError, match="backend"):
        swa_plain(q, k, v, window=2, backend="fast")
    with pytest.raises(ValueError, match="block must be >= 1"):
        sliding_window_attention(q, k, v, window=2, block=0)
    with pytest.raises(ValueError, match="context"):
        sliding_window_decode(q, k[:, :, :3], v[:, :, :3], window=2, num_prefix=1)


@pytest.mark.parametrize("fn", [swa_plain, sliding_window_attention])
def test_mismatched_shapes_raise(fn):
    q, k, v = qkv(0, 1, 2, 5, 4, torch.device("cpu"))
    errors = ValueError if fn is swa_plain else (ValueError, TypeError)
    with pytest.raises(errors, match="seq of q" if fn is swa_plain else None):
        fn(q, k[:, :, :4], v[:, :, :4], window=2)
    with pytest.raises(errors, match="k and v shapes differ" if fn is swa_plain else None):
        fn(q, k, v[:, :1], window=2)
    with pytest.raises(errors, match="dim_head of q" if fn is swa_plain else None):
        fn(q, k[..., :3], v[..., :3], window=2)
    with pytest.raises(errors, match=r"\(batch, heads, seq, dim_head\)" if fn is swa_plain else None):
        fn(q[0], k[0], v[0], window=2)


def test_decode_and_segment_mismatches_raise():
    q, k, v = qkv(0, 1, 2, 6, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match="heads of q"):
        decode_plain(q[:, :1], k, v, window=3)
    with pytest.raises(ValueError, match="segment must be >= 1"):
        segment_attention(q, k, v, segment=0)
    with pytest.raises(ValueError, match="both memory_k and memory_v"):
        segment_attention(q, k, v, segment=3, memory_k=k)
    with pytest.raises(ValueError, match="memory_per_segment .* must be <= segment"):
        segment_attention(q, k, v, segment=3, memory_k=k, memory_v=v, memory_per_segment=4)
    with pytest.raises(ValueError, match="do not fill 2 segments of 3"):
        segment_attention(q, k, v, segment=3, memory_k=k[:, :, :3], memory_v=v[:, :, :3])
    with pytest.raises(ValueError, match="memory_visibility"):
        segment_plain(q, k, v, segment=3, memory_visibility="some")
    with pytest.raises(ValueError, match=r"dim_head of q \(4\) and k \(3\)"):
        segment_plain(q, k, v, segment=3, prefix_k=k[..., :3], prefix_v=v[..., :3])
