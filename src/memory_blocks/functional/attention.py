"""Windowed causal attention with an always-visible prefix, and segment attention for MAC.

Visibility (sliding window). Query position ``i`` sees key position ``j`` iff::

    j <= i  and  (j < num_prefix  or  j > i - window)

The first ``num_prefix`` positions (persistent tokens, paper eq. 19) stay visible to every
later query; ``window`` counts the current token, so ``window = 1`` sees only itself (plus the
prefix). The default ``"blocked"`` path costs ``O(seq * (window + prefix))`` time and memory:
queries are cut into blocks of ``block`` tokens, each block scores the ``block + window - 1``
keys that can reach it plus the prefix keys, and one softmax runs over ``[prefix | local]``.

Backends are chosen explicitly, never by fallback:

- ``"blocked"``: plain PyTorch (matmul + masked softmax), any device, linear cost.
- ``"sdpa"``: the same blocked layout, with torch's fused ``scaled_dot_product_attention`` as
  the per-block kernel (a boolean mask per block), any device, linear cost.
- ``"dense"``: one ``seq x seq`` masked softmax; the reference, quadratic, short inputs only.
- ``"flex"``: ``torch.nn.attention.flex_attention`` with a block-sparse mask; CUDA only.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, get_args, no_type_check

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from memory_blocks.functional.validate import check_integer

__all__ = [
    "MEMORY_VISIBILITIES",
    "Backend",
    "sliding_window_attention",
    "sliding_window_decode",
    "segment_attention",
]

#: Which memory tokens a MAC query sees: slots up to its own, its own slot only, or all.
MEMORY_VISIBILITIES = ("causal", "own", "all")
Backend = Literal["blocked", "sdpa", "dense", "flex"]
_BACKENDS = get_args(Backend)


def _check_qkv(name: str, q: Any, k: Any, v: Any, *, same_seq: bool = True) -> None:
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(
                f"{name}: {arg} must be (batch, heads, seq, dim_head), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{name}: {arg} must be a floating-point tensor, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    for axis, label in ((0, "batch"), (1, "heads"), (3, "dim_head")):
        if q.shape[axis] != k.shape[axis]:
            raise ValueError(
                f"{name}: {label} of q ({q.shape[axis]}) and k ({k.shape[axis]}) differ"
            )
        if q.shape[axis] < 1:
            raise ValueError(f"{name}: {label} must be >= 1, got {q.shape[axis]} (q of shape {tuple(q.shape)})")
    if same_seq and q.shape[2] != k.shape[2]:
        raise ValueError(f"{name}: seq of q ({q.shape[2]}) and k ({k.shape[2]}) differ")
    if q.shape[2] < 1:
        raise ValueError(f"{name}: seq must be >= 1, got {q.shape[2]}")
    if q.dtype != k.dtype or k.dtype != v.dtype:
        raise ValueError(f"{name}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or k.device != v.device:
        raise ValueError(f"{name}: q, k, v must share a device, got {q.device}, {k.device}, {v.device}")


def _check_window(name: str, window: object, num_prefix: object) -> None:
    check_integer(name, "window", window, 1)
    check_integer(name, "num_prefix", num_prefix, 0)


def _scale(name: str, scale: object, dim_head: int) -> float:
    """``scale``, or ``dim_head ** -0.5`` when ``None``; refuses anything but a finite number."""
    if scale is None:
        return dim_head ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name}: scale must be a finite number or None, got {scale!r}")
    return float(scale)


#: Score elements computed at once by the blocked path. On the CPU 2^20 (float32: 4 MiB)
#: keeps the intermediates cache-resident, so long inputs run at the per-token speed of short
#: ones; on an accelerator fewer, larger launches matter more. Both bound the peak memory.
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 26


def _default_block(window: int) -> int:
    # Measured on 2 CPU threads (benchmarks/bench_attention.py): blocks of 64 queries keep
    # the band's wasted half small while the matmuls stay large enough to be efficient.
    return max(16, min(window, 64))


def _band_mask(
    seq: int, window: int, num_prefix: int, block: int, device: torch.device
) -> Bool[Tensor, "blocks block keys"]:
    """Visibility of ``[prefix | block + window - 1 local keys]`` for each query block."""
    blocks = -(-seq // block)
    span = block + window - 1
    r = torch.arange(block, device=device)
    c = torch.arange(span, device=device)
    b = torch.arange(blocks, device=device)
    q_pos = (b[:, None] * block + r[None, :])[:, :, None]  # (blocks, block, 1)
    # Local key c of block b sits at absolute position b * block - (window - 1) + c.
    k_pos = (b[:, None] * block - (window - 1) + c[None, :])[:, None, :]  # (blocks, 1, span)
    local = (k_pos <= q_pos) & (k_pos > q_pos - window) & (k_pos >= num_prefix)
    prefix = torch.arange(num_prefix, device=device)[None, None, :] <= q_pos
    return torch.cat([prefix, local], dim=-1)


def _blocked(q: Tensor, k: Tensor, v: Tensor, window: int, num_prefix: int, scale: float,
             block: int, fused: bool) -> Tensor:
    """Blocked sliding-window attention, a few query blocks at a time."""
    batch, heads, seq, dh = q.shape
    blocks = -(-seq // block)
    tail = blocks * block - seq
    span = block + window - 1
    mask = _band_mask(seq, window, num_prefix, block, q.device)
    hidden = ~mask
    qb = F.pad(q if fused else q * scale, (0, 0, 0, tail)).view(batch, heads, blocks, block, dh)
    # Keys padded in front by window - 1, so that block b's local keys start at b * block.
    k_pad = F.pad(k, (0, 0, window - 1, tail))
    v_pad = F.pad(v, (0, 0, window - 1, tail))
    pre_k, pre_v = k[:, :, None, :num_prefix], v[:, :, None, :num_prefix]
    budget = _CHUNK_ELEMENTS if q.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
    step = max(1, budget // (batch * heads * block * (num_prefix + span)))
    outs = []
    for b0 in range(0, blocks, step):
        b1 = min(blocks, b0 + step)
        n = b1 - b0

        def local(t: Tensor, pre: Tensor) -> Tensor:
            band = t[:, :, b0 * block : b1 * block + window - 1].unfold(2, span, block)
            pre = pre.expand(batch, heads, n, num_prefix, dh)
            return torch.cat([pre, band.transpose(-1, -2)], dim=3)

        kb, vb, qc, mc = local(k_pad, pre_k), local(v_pad, pre_v), qb[:, :, b0:b1], mask[b0:b1]
        if fused:
            # 4-D (batch * heads, blocks, ...) inputs, so that the fused kernels apply.
            def flat(t: Tensor) -> Tensor:
                return t.reshape(batch * heads, *t.shape[2:])

            out = F.scaled_dot_product_attention(
                flat(qc), flat(kb), flat(vb), attn_mask=mc, scale=scale
            ).view(batch, heads, n, block, dh)
        else:
            # In place: the matmul's backward needs its inputs, not its output.
            scores = torch.matmul(qc, kb.transpose(-1, -2)).masked_fill_(hidden[b0:b1], -math.inf)
            out = torch.matmul(torch.softmax(scores, dim=-1), vb)
        outs.append(out)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.reshape(batch, heads, -1, dh)[:, :, :seq]


def _dense_mask(
    q_pos: Tensor, k_pos: Tensor, window: int, num_prefix: int
) -> Bool[Tensor, "queries keys"]:
    qp, kp = q_pos[:, None], k_pos[None, :]
    return (kp <= qp) & ((kp < num_prefix) | (kp > qp - window))


def _masked_softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float
) -> Tensor:
    scores = torch.matmul(q * scale, k.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


_flex_compiled = None


@functools.lru_cache(maxsize=16)
def _flex_block_mask(seq: int, window: int, num_prefix: int, device: torch.device) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    @no_type_check  # traced by torch.compile: keep runtime type-checking wrappers off it
    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx <= q_idx) & ((kv_idx < num_prefix) | (q_idx - kv_idx < window))

    # Compiled, so that building the block mask never materialises the seq x seq mask.
    return create_block_mask(mask_mod, None, None, seq, seq, device=device, _compile=True)


def _flex(q: Tensor, k: Tensor, v: Tensor, window: int, num_prefix: int, scale: float) -> Tensor:
    global _flex_compiled
    if q.device.type != "cuda":
        raise ValueError(
            f"sliding_window_attention: backend='flex' needs CUDA tensors, got device "
            f"{q.device.type}; use backend='blocked'"
        )
    from torch.nn.attention.flex_attention import flex_attention

    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    block_mask = _flex_block_mask(q.shape[2], window, num_prefix, q.device)
    return _flex_compiled(q, k, v, block_mask=block_mask, scale=scale)


def sliding_window_attention(
    q: Float[Tensor, "batch heads seq dim_head"],
    k: Float[Tensor, "batch heads seq dim_head"],
    v: Float[Tensor, "batch heads seq dim_head"],
    *,
    window: int,
    num_prefix: int = 0,
    scale: float | None = None,
    backend: Backend = "blocked",
    block: int | None = None,
) -> Float[Tensor, "batch heads seq dim_head"]:
    """Causal attention over the last ``window`` positions plus an always-visible prefix.

    ``out_i = sum_j softmax_j(scale * q_i . k_j) v_j`` over ``j <= i`` with ``j < num_prefix``
    or ``j > i - window`` (the prefix holds persistent tokens, paper eq. 19).

    Args:
        q, k, v: ``(batch, heads, seq, dim_head)``.
        window: keys a query sees outside the prefix, itself included (>= 1).
        num_prefix: leading positions visible to every later query (<= seq).
        scale: score scale, ``dim_head ** -0.5`` by default.
        backend: ``"blocked"`` (default), ``"sdpa"``, ``"dense"`` or ``"flex"`` (CUDA);
            see the module docstring. No backend falls back to another.
        block: query block size of the blocked backends (default from ``window``).

    Returns:
        ``(batch, heads, seq, dim_head)`` the attention output of each query.

    Raises:
        ValueError: on a window, prefix or block that is not an integer of its range, a
            scale that is not a finite number, an unknown backend, mismatched shapes, an
            empty batch, head, sequence or feature axis, non-floating-point tensors, or
            q, k, v of different dtypes or devices.
        TypeError: when q, k or v is not a tensor.
    """
    name = "sliding_window_attention"
    _check_qkv(name, q, k, v)
    _check_window(name, window, num_prefix)
    seq = q.shape[2]
    if num_prefix > seq:
        raise ValueError(f"{name}: num_prefix ({num_prefix}) exceeds seq ({seq})")
    if backend not in _BACKENDS:
        raise ValueError(f"{name}: backend must be one of {_BACKENDS}, got {backend!r}")
    if block is not None:
        check_integer(name, "block", block, 1)
    scale = _scale(name, scale, q.shape[-1])
    if backend == "dense":
        pos = torch.arange(seq, device=q.device)
        return _masked_softmax_attention(q, k, v, _dense_mask(pos, pos, window, num_prefix), scale)
    if backend == "flex":
        return _flex(q, k, v, window, num_prefix, scale)
    # A window reaching past the start is the same as one that just reaches it.
    window = min(window, seq)
    block = min(block or _default_block(window), seq)
    return _blocked(q, k, v, window, num_prefix, scale, block, backend == "sdpa")


def sliding_window_decode(
    q: Float[Tensor, "batch heads new dim_head"],
    k: Float[Tensor, "batch heads context dim_head"],
    v: Float[Tensor, "batch heads context dim_head"],
    *,
    window: int,
    num_prefix: int = 0,
    scale: float | None = None,
) -> Float[Tensor, "batch heads new dim_head"]:
    """Sliding-window attention of the newest ``new`` queries over a cached context.

    ``k, v`` are laid out ``[prefix (num_prefix) | history | new]``: the ``new`` queries sit at
    the last ``new`` key positions, the history holds the keys just before them (a streaming
    cache keeps ``window - 1`` of them). The visibility rule is the one of
    :func:`sliding_window_attention` on the concatenated sequence, so decoding in pieces equals
    the parallel call. Cost ``O(new * context)`` for ``new <= window``, else the blocked path.

    Args:
        q: ``(batch, heads, new, dim_head)`` queries of the newest ``new`` positions.
        k, v: ``(batch, heads, context, dim_head)`` keys and values ``[prefix | history | new]``,
            ``context >= num_prefix + new``.
        window: keys a query sees outside the prefix, itself included (>= 1).
        num_prefix: leading context positions visible to every query.
        scale: score scale, ``dim_head ** -0.5`` by default.

    Returns:
        ``(batch, heads, new, dim_head)`` the attention output of each new query.

    Raises:
        ValueError: on a bad window, prefix or scale, mismatched shapes, empty axes, or
            tensors that are not floating point or differ in dtype or device.
        TypeError: when q, k or v is not a tensor.
    """
    name = "sliding_window_decode"
    _check_qkv(name, q, k, v, same_seq=False)
    _check_window(name, window, num_prefix)
    new, context = q.shape[2], k.shape[2]
    if context < new + num_prefix:
        raise ValueError(
            f"{name}: context ({context}) must hold the prefix ({num_prefix}) and the "
            f"{new} new keys"
        )
    scale = _scale(name, scale, q.shape[-1])
    if new > window:
        # Queries for the context positions are zeros; their outputs are dropped.
        q_full = F.pad(q, (0, 0, context - new, 0))
        out = sliding_window_attention(
            q_full, k, v, window=window, num_prefix=num_prefix, scale=scale
        )
        return out[:, :, context - new :]
    k_pos = torch.arange(context, device=q.device)
    mask = _dense_mask(k_pos[context - new :], k_pos, window, num_prefix)
    return _masked_softmax_attention(q, k, v, mask, scale)


def _segment_mask(
    seq: int, segment: int, num_prefix: int, num_memory: int, per_segment: int,
    visibility: str, device: torch.device,
) -> Bool[Tensor, "segments segment keys"]:
    """Visibility of ``[prefix | memory of the segment | segment]`` for each segment's queries."""
    segments = -(-seq // segment)
    r = torch.arange(segment, device=device)[None, :, None]  # query offset in the segment
    n = torch.arange(segments, device=device)[:, None, None]
    m = torch.arange(per_segment, device=device)[None, None, :]  # memory slot in the segment
    prefix = torch.ones(segments, segment, num_prefix, dtype=torch.bool, device=device)
    memory = (n * per_segment + m < num_memory).expand(segments, segment, per_segment)
    if visibility == "causal":
        memory = memory & (m <= r)
    elif visibility == "own":
        memory = memory & (m == r)
    c = torch.arange(segment, device=device)[None, None, :]
    own = (c <= r).expand(segments, segment, segment)
    return torch.cat([prefix, memory, own], dim=-1)


def segment_attention(
    q: Float[Tensor, "batch heads seq dim_head"],
    k: Float[Tensor, "batch heads seq dim_head"],
    v: Float[Tensor, "batch heads seq dim_head"],
    *,
    segment: int,
    prefix_k: Float[Tensor, "batch heads prefix dim_head"] | None = None,
    prefix_v: Float[Tensor, "batch heads prefix dim_head"] | None = None,
    memory_k: Float[Tensor, "batch heads memory dim_head"] | None = None,
    memory_v: Float[Tensor, "batch heads memory dim_head"] | None = None,
    memory_per_segment: int | None = None,
    memory_visibility: Literal["causal", "own", "all"] = "causal",
    scale: float | None = None,
) -> Float[Tensor, "batch heads seq dim_head"]:
    """Block-causal attention for MAC: each segment attends to ``[prefix | memory | segment]``.

    The sequence is cut into segments of ``segment`` tokens (the last may be shorter). Query
    ``r`` of segment ``n`` (position ``t = n * segment + r``) sees:

    - every prefix key (persistent tokens, paper eq. 19), shared by all segments;
    - the memory tokens of its segment: memory token ``u`` belongs to segment
      ``u // memory_per_segment`` and has slot ``m = u % memory_per_segment``. With
      ``memory_visibility="all"`` all of them; with ``"causal"`` only slots ``m <= r``: slot
      ``m`` is aligned with the segment's token ``m`` (for MAC's ``h_t = M_{n-1}(q_t)``, one
      memory token per position, ``memory_per_segment = segment`` and ``u = t``); with ``"own"``
      only slot ``m = r``, the memory token aligned with the query itself;
    - the tokens of its own segment at offsets ``<= r`` (causal inside the segment).

    Only the segment tokens are queries. ``memory`` holds ``memory_per_segment`` tokens per
    segment, the last segment may hold fewer:
    ``(segments - 1) * memory_per_segment < memory <= segments * memory_per_segment``.

    Args:
        q, k, v: ``(batch, heads, seq, dim_head)``, the segment tokens.
        segment: tokens per segment (>= 1).
        prefix_k, prefix_v: ``(batch, heads, prefix, dim_head)`` or both ``None``.
        memory_k, memory_v: ``(batch, heads, memory, dim_head)`` or both ``None``.
        memory_per_segment: memory tokens per segment, ``segment`` by default; with
            ``"causal"`` visibility at most ``segment``.
        memory_visibility: ``"causal"``, ``"own"`` (both aligned, see above) or ``"all"``.
        scale: score scale, ``dim_head ** -0.5`` by default.

    Cost ``O(seq * (prefix + memory_per_segment + segment))`` time and memory.

    Returns:
        ``(batch, heads, seq, dim_head)`` the attention output of each segment token.

    Raises:
        ValueError: on a segment or memory_per_segment that is not an integer >= 1, a bad
            layout, visibility or scale, mismatched shapes, empty axes, or tensors that are
            not floating point or differ in dtype or device.
        TypeError: when a tensor argument is not a tensor.
    """
    name = "segment_attention"
    _check_qkv(name, q, k, v)
    batch, heads, seq, dh = q.shape
    check_integer(name, "segment", segment, 1)
    if memory_visibility not in MEMORY_VISIBILITIES:
        raise ValueError(
            f"{name}: memory_visibility must be one of {MEMORY_VISIBILITIES}, got {memory_visibility!r}"
        )
    empty = q.new_zeros(batch, heads, 0, dh)
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError(f"{name}: give both prefix_k and prefix_v, or neither")
    if (memory_k is None) != (memory_v is None):
        raise ValueError(f"{name}: give both memory_k and memory_v, or neither")
    prefix_k = empty if prefix_k is None else prefix_k
    prefix_v = empty if prefix_v is None else prefix_v
    memory_k = empty if memory_k is None else memory_k
    memory_v = empty if memory_v is None else memory_v
    _check_qkv(name + " (prefix)", q, prefix_k, prefix_v, same_seq=False)
    _check_qkv(name + " (memory)", q, memory_k, memory_v, same_seq=False)
    segments = -(-seq // segment)
    num_memory = memory_k.shape[2]
    per_segment = segment if memory_per_segment is None else memory_per_segment
    check_integer(name, "memory_per_segment", per_segment, 1)
    if memory_visibility != "all" and per_segment > segment:
        raise ValueError(
            f"{name}: {memory_visibility} memory aligns slot m with token m, so memory_per_segment "
            f"({per_segment}) must be <= segment ({segment})"
        )
    if num_memory > 0 and not (segments - 1) * per_segment < num_memory <= segments * per_segment:
        raise ValueError(
            f"{name}: {num_memory} memory tokens do not fill {segments} segments of "
            f"{per_segment} (the last may hold fewer, none may be empty)"
        )
    if num_memory == 0:
        per_segment = 0
    scale = _scale(name, scale, dh)
    num_prefix = prefix_k.shape[2]

    def blocks(t: Tensor, count: int, size: int) -> Tensor:
        return F.pad(t, (0, 0, 0, count * size - t.shape[2])).view(batch, heads, count, size, dh)

    def keys(pre: Tensor, mem: Tensor, own: Tensor) -> Tensor:
        pre = pre[:, :, None].expand(batch, heads, segments, num_prefix, dh)
        mem, own = blocks(mem, segments, per_segment), blocks(own, segments, segment)
        return torch.cat([pre, mem, own], dim=3)

    mask = _segment_mask(
        seq, segment, num_prefix, num_memory, per_segment, memory_visibility, q.device
    )
    out = _masked_softmax_attention(
        blocks(q, segments, segment), keys(prefix_k, memory_k, k), keys(prefix_v, memory_v, v),
        mask, scale,
    )
    return out.reshape(batch, heads, segments * segment, dh)[:, :, :seq]
