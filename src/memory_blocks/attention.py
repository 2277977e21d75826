"""Attention modules: sliding-window attention with a streaming cache; MAC's segment attention.

Both wrap the pure functions of :mod:`memory_blocks.functional.attention` with projections,
heads and rotary positions::

    x (batch, seq, dim) -> W_qkv -> q, k, v (batch, heads, seq, dim_head) -> RoPE(q, k)
      -> windowed / segment attention -> merge heads -> W_out -> (batch, seq, dim)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.functional.attention import (
    MEMORY_VISIBILITIES,
    Backend,
    segment_attention,
    sliding_window_attention,
    sliding_window_decode,
)
from memory_blocks.functional.validate import check_integer, check_layer_input
from memory_blocks.layers.rotary import RotaryEmbedding

__all__ = ["MEMORY_POSITIONS", "KVCache", "SlidingWindowAttention", "SegmentAttention"]

#: Rotary positions of MAC's memory slots: before the segment, or at their tokens' positions.
MEMORY_POSITIONS = ("prefix", "aligned")


@dataclass(frozen=True)
class KVCache:
    """Streaming state of :class:`SlidingWindowAttention`: what the next tokens can still see.

    Keys are stored already rotated. The cache never holds more than
    ``num_prefix + window - 1`` keys: the prefix forever, plus the ``window - 1`` most recent
    other keys (a new token sees itself and those).

    Attributes:
        prefix_k, prefix_v: ``(batch, heads, prefix, dim_head)``, the prefix's keys/values.
        k, v: ``(batch, heads, recent, dim_head)``, the most recent non-prefix keys/values.
        position: absolute position of the next token (tokens seen, the prefix included).
    """

    prefix_k: Float[Tensor, "batch heads prefix dim_head"]
    prefix_v: Float[Tensor, "batch heads prefix dim_head"]
    k: Float[Tensor, "batch heads recent dim_head"]
    v: Float[Tensor, "batch heads recent dim_head"]
    position: int

    @property
    def size(self) -> int:
        """Keys held: prefix plus recent."""
        return self.prefix_k.shape[2] + self.k.shape[2]

    def detach(self) -> KVCache:
        """The same cache cut from the autograd graph (truncated backpropagation)."""
        return KVCache(
            self.prefix_k.detach(), self.prefix_v.detach(), self.k.detach(), self.v.detach(),
            self.position,
        )


class SlidingWindowAttention(nn.Module):
    """Multi-head causal attention over the last ``window`` tokens plus a persistent prefix.

    ``forward`` receives the whole sequence ``[persistent | x]`` (e.g. from
    :class:`~memory_blocks.persistent.PersistentMemory`); its first ``num_prefix`` positions
    stay visible to every later token. Rotary positions count over the whole sequence, the
    prefix included (the persistent tokens sit at positions ``0 .. num_prefix - 1``), as if
    the concatenation were an ordinary input (paper eq. 19).

    Streaming: the first call (``cache=None``) takes the prefix and the first tokens; later
    calls take only new tokens and the returned :class:`KVCache`. Feeding a sequence in pieces
    of any sizes equals one call.

    Args:
        dim: model width.
        heads: attention heads.
        window: tokens a query sees besides the prefix, itself included (>= 1).
        dim_head: features per head, ``dim // heads`` by default.
        num_prefix: leading positions that stay visible (persistent tokens), >= 0.
        rotary: apply rotary position embeddings to q and k.
        rotary_base: RoPE frequency base.
        bias: biases in the projections.
        backend: kernel of the parallel path (see ``sliding_window_attention``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        window: int,
        dim_head: int | None = None,
        num_prefix: int = 0,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        bias: bool = False,
        backend: Backend = "blocked",
    ) -> None:
        super().__init__()
        name = "SlidingWindowAttention"
        dim_head = _dim_head(name, dim, heads, dim_head)
        check_integer(name, "window", window, 1)
        check_integer(name, "num_prefix", num_prefix, 0)
        _flags(name, rotary=rotary, bias=bias)
        _base(name, rotary_base)
        if backend not in get_args(Backend):
            raise ValueError(
                f"SlidingWindowAttention: backend must be one of {get_args(Backend)}, "
                f"got {backend!r}"
            )
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.window, self.num_prefix, self.backend = window, num_prefix, backend
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=bias)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=bias)
        self.rotary = RotaryEmbedding(dim_head, base=rotary_base) if rotary else None

    def _qkv(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        batch, seq, _ = x.shape
        qkv = self.to_qkv(x).view(batch, seq, 3, self.heads, self.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.rotary is not None:
            q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)
        return q, k, v

    def _merge(self, out: Tensor) -> Tensor:
        batch, _, seq, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(batch, seq, self.heads * self.dim_head))

    def forward(
        self, x: Float[Tensor, "batch seq dim"], *, cache: KVCache | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], KVCache]:
        """Attends ``x`` (the whole ``[prefix | tokens]`` without a cache, new tokens with one).

        Returns the output ``(batch, seq, dim)`` and the cache to pass with the next tokens.
        """
        name = "SlidingWindowAttention"
        check_layer_input(name, "x", x, self.to_qkv.weight)
        if x.ndim != 3 or x.shape[-1] != self.dim or x.shape[1] < 1:
            raise ValueError(
                f"{name}: expected (batch, seq >= 1, {self.dim}), got {tuple(x.shape)}"
            )
        if x.shape[0] < 1:
            raise ValueError(f"{name}: the batch is empty (x of shape {tuple(x.shape)})")
        keep = self.window - 1
        if cache is None:
            if x.shape[1] < self.num_prefix:
                raise ValueError(
                    f"{name}: the first call must hold the {self.num_prefix} prefix tokens, "
                    f"got seq {x.shape[1]}"
                )
            q, k, v = self._qkv(x, 0)
            out = sliding_window_attention(
                q, k, v, window=self.window, num_prefix=self.num_prefix, backend=self.backend
            )
            p = self.num_prefix
            prefix_k, prefix_v, k, v = k[:, :, :p], v[:, :, :p], k[:, :, p:], v[:, :, p:]
            position = x.shape[1]
        else:
            self._check_cache(cache, x)
            q, k_new, v_new = self._qkv(x, cache.position)
            prefix_k, prefix_v = cache.prefix_k, cache.prefix_v
            k, v = torch.cat([cache.k, k_new], dim=2), torch.cat([cache.v, v_new], dim=2)
            out = sliding_window_decode(
                q, torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2),
                window=self.window, num_prefix=self.num_prefix,
            )
            position = cache.position + x.shape[1]
        # Copies, so that the cache does not keep the whole sequence's keys alive.
        recent = k.shape[2] - min(keep, k.shape[2])
        new_cache = KVCache(
            prefix_k=prefix_k.clone() if cache is None else prefix_k,
            prefix_v=prefix_v.clone() if cache is None else prefix_v,
            k=k[:, :, recent:].clone(),
            v=v[:, :, recent:].clone(),
            position=position,
        )
        return self._merge(out), new_cache

    def _check_cache(self, cache: Any, x: Tensor) -> None:
        name = "SlidingWindowAttention"
        if not isinstance(cache, KVCache):
            raise TypeError(f"{name}: cache must be a KVCache or None, got {type(cache).__name__}")
        if isinstance(cache.position, bool) or not isinstance(cache.position, int) or (
            cache.position < cache.size
        ):
            raise ValueError(
                f"{name}: cache.position must be an integer >= the {cache.size} keys it holds, "
                f"got {cache.position!r}"
            )
        for arg in ("prefix_k", "prefix_v", "k", "v"):
            t = getattr(cache, arg)
            if not isinstance(t, Tensor) or t.ndim != 4:
                raise ValueError(
                    f"{name}: cache.{arg} must be a (batch, heads, keys, dim_head) tensor, got "
                    f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}"
                )
            check_layer_input(name, f"cache.{arg}", t, self.to_qkv.weight)
        if cache.k.shape != cache.v.shape or cache.prefix_k.shape != cache.prefix_v.shape:
            raise ValueError(
                f"{name}: the cache's keys and values differ in shape: k {tuple(cache.k.shape)}, "
                f"v {tuple(cache.v.shape)}, prefix_k {tuple(cache.prefix_k.shape)}, "
                f"prefix_v {tuple(cache.prefix_v.shape)}"
            )
        if cache.prefix_k.shape[:2] + cache.prefix_k.shape[3:] != cache.k.shape[:2] + cache.k.shape[3:]:
            raise ValueError(
                f"{name}: the cache's prefix {tuple(cache.prefix_k.shape)} and recent keys "
                f"{tuple(cache.k.shape)} differ in (batch, heads, dim_head)"
            )
        want = (x.shape[0], self.heads, self.dim_head)
        got = (cache.k.shape[0], cache.k.shape[1], cache.k.shape[3])
        if got != want:
            raise ValueError(
                f"{name}: cache (batch, heads, dim_head) is {got}, expected {want}"
            )
        if cache.prefix_k.shape[2] != self.num_prefix:
            raise ValueError(
                f"{name}: cache holds {cache.prefix_k.shape[2]} prefix keys, "
                f"expected num_prefix={self.num_prefix}"
            )
        if cache.k.shape[2] > self.window - 1:
            raise ValueError(
                f"{name}: cache holds {cache.k.shape[2]} recent keys, more than window - 1 "
                f"= {self.window - 1}"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, heads={self.heads}, dim_head={self.dim_head}, window={self.window}, "
            f"num_prefix={self.num_prefix}, rotary={self.rotary is not None}"
        )


class SegmentAttention(nn.Module):
    """MAC's attention: each segment attends to ``[persistent | memory tokens | segment]``.

    The persistent tokens, memory tokens and segment tokens share the key/value projections;
    only segment tokens are queries. Rotary positions are local to a segment, laid out as
    ``[persistent 0..P-1 | memory P..P+M-1 | tokens P+M..P+M+S-1]`` (``M`` memory tokens per
    segment, memory slot ``m`` at ``P + m``; ``memory_positions="prefix"``), so every segment
    sees the same geometry. ``memory_positions="aligned"`` gives memory slot ``m`` the position
    of segment token ``m`` (``P + M + m``): a token and the retrieval made with its own query
    sit at relative distance 0. The visibility rules are those of
    :func:`~memory_blocks.functional.segment_attention`. Parallel only: MAC streams segment by
    segment.

    Args:
        dim: model width.
        heads: attention heads.
        segment: tokens per segment (>= 1).
        dim_head: features per head, ``dim // heads`` by default.
        memory_per_segment: memory tokens per segment, ``segment`` by default.
        memory_visibility: ``"causal"`` (token ``r`` sees slots ``m <= r``: slot ``m`` aligned
            with token ``m``), ``"own"`` (token ``r`` sees slot ``r`` only) or ``"all"``.
        memory_positions: rotary positions of the memory slots, ``"prefix"`` (after the
            persistent tokens, before the segment) or ``"aligned"`` (slot ``m`` at token ``m``'s).
        rotary: apply rotary position embeddings.
        rotary_base: RoPE frequency base.
        bias: biases in the projections.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        segment: int,
        dim_head: int | None = None,
        memory_per_segment: int | None = None,
        memory_visibility: Literal["causal", "own", "all"] = "causal",
        memory_positions: Literal["prefix", "aligned"] = "prefix",
        rotary: bool = True,
        rotary_base: float = 10000.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        name = "SegmentAttention"
        dim_head = _dim_head(name, dim, heads, dim_head)
        check_integer(name, "segment", segment, 1)
        per = segment if memory_per_segment is None else memory_per_segment
        check_integer(name, "memory_per_segment", per, 1)
        _flags(name, rotary=rotary, bias=bias)
        _base(name, rotary_base)
        if memory_visibility not in MEMORY_VISIBILITIES:
            raise ValueError(
                f"SegmentAttention: memory_visibility must be one of {MEMORY_VISIBILITIES}, "
                f"got {memory_visibility!r}"
            )
        if memory_visibility != "all" and per > segment:
            raise ValueError(
                f"SegmentAttention: {memory_visibility} memory aligns slot m with token m, so "
                f"memory_per_segment ({per}) must be <= segment ({segment})"
            )
        if memory_positions not in MEMORY_POSITIONS:
            raise ValueError(
                f"SegmentAttention: memory_positions must be one of {MEMORY_POSITIONS}, got {memory_positions!r}"
            )
        if memory_positions == "aligned" and per > segment:
            raise ValueError(
                f"SegmentAttention: aligned memory positions put slot m at token m, so "
                f"memory_per_segment ({per}) must be <= segment ({segment})"
            )
        self.dim, self.heads, self.dim_head, self.segment = dim, heads, dim_head, segment
        self.memory_per_segment = per
        self.memory_visibility = memory_visibility
        self.memory_positions = memory_positions
        self.to_q = nn.Linear(dim, heads * dim_head, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=bias)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=bias)
        self.rotary = RotaryEmbedding(dim_head, base=rotary_base) if rotary else None

    def _split(self, t: Tensor) -> Tensor:
        batch, seq, _ = t.shape
        return t.view(batch, seq, -1, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)

    def _rotate(self, t: Tensor, positions: Tensor) -> Tensor:
        return t if self.rotary is None else self.rotary(t, positions=positions)

    def forward(
        self,
        x: Float[Tensor, "batch seq dim"],
        *,
        memory: Float[Tensor, "batch memory dim"] | None = None,
        persistent: Float[Tensor, "batch prefix dim"] | None = None,
    ) -> Float[Tensor, "batch seq dim"]:
        """Attends the segments of ``x`` to ``[persistent | memory | segment]``.

        ``memory`` holds ``memory_per_segment`` tokens per segment, one segment after another
        (the last may hold fewer); ``persistent`` is shared by all segments.
        """
        name = "SegmentAttention"
        check_layer_input(name, "x", x, self.to_q.weight)
        if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name}: x must be (batch >= 1, seq >= 1, {self.dim}), got {tuple(x.shape)}")
        for arg, t in (("memory", memory), ("persistent", persistent)):
            if t is not None:
                check_layer_input(name, arg, t, self.to_q.weight)
        for arg, t in (("x", x), ("memory", memory), ("persistent", persistent)):
            bad = t is not None and (
                t.ndim != 3 or t.shape[-1] != self.dim or t.shape[0] != x.shape[0]
            )
            if bad:
                raise ValueError(
                    f"{name}: {arg} must be (batch={x.shape[0]}, tokens, {self.dim}), "
                    f"got {tuple(t.shape)}"
                )
        device, seq = x.device, x.shape[1]
        num_prefix = 0 if persistent is None else persistent.shape[1]
        per = 0 if memory is None else self.memory_per_segment
        q = self._split(self.to_q(x))[0]
        k, v = self._split(self.to_kv(x)).unbind(0)
        local = torch.arange(seq, device=device) % self.segment + num_prefix + per
        q, k = self._rotate(q, local), self._rotate(k, local)
        prefix_k = prefix_v = memory_k = memory_v = None
        if persistent is not None:
            prefix_k, prefix_v = self._split(self.to_kv(persistent)).unbind(0)
            prefix_k = self._rotate(prefix_k, torch.arange(num_prefix, device=device))
        if memory is not None:
            memory_k, memory_v = self._split(self.to_kv(memory)).unbind(0)
            slots = torch.arange(memory.shape[1], device=device) % self.memory_per_segment
            shift = num_prefix + (per if self.memory_positions == "aligned" else 0)
            memory_k = self._rotate(memory_k, slots + shift)
        out = segment_attention(
            q, k, v, segment=self.segment, prefix_k=prefix_k, prefix_v=prefix_v,
            memory_k=memory_k, memory_v=memory_v, memory_per_segment=self.memory_per_segment,
            memory_visibility=self.memory_visibility,
        )
        batch = x.shape[0]
        return self.to_out(out.transpose(1, 2).reshape(batch, seq, self.heads * self.dim_head))

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, heads={self.heads}, dim_head={self.dim_head}, segment={self.segment}, "
            f"memory_per_segment={self.memory_per_segment}, "
            f"memory_visibility={self.memory_visibility!r}, memory_positions={self.memory_positions!r}, "
            f"rotary={self.rotary is not None}"
        )


def _flags(name: str, **flags: object) -> None:
    for arg, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name}: {arg} must be True or False, got {value!r}")


def _base(name: str, rotary_base: object) -> None:
    if isinstance(rotary_base, bool) or not isinstance(rotary_base, (int, float)) or not (
        math.isfinite(rotary_base) and rotary_base > 0
    ):
        raise ValueError(f"{name}: rotary_base must be a finite number > 0, got {rotary_base!r}")


def _dim_head(name: str, dim: Any, heads: Any, dim_head: Any) -> int:
    check_integer(name, "dim", dim, 1)
    check_integer(name, "heads", heads, 1)
    if dim_head is None:
        if dim % heads:
            raise ValueError(
                f"{name}: dim ({dim}) is not divisible by heads ({heads}); give dim_head"
            )
        return dim // heads
    check_integer(name, "dim_head", dim_head, 1)
    return dim_head
