"""MAC: memory as context (paper section 4.1, eqs. 21-25)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.attention import SegmentAttention
from memory_blocks.neural_memory import NeuralMemory, NeuralMemoryState
from memory_blocks.persistent import PersistentMemory

from titans.blocks.common import Block, detach_memory

__all__ = ["MAC_MEMORY_NORMS", "MAC_WRITES", "MACBlock", "MACState", "MemoryTokenGain"]

#: What a MAC memory may write: the attention output ``y`` or the segment's normalised inputs.
MAC_WRITES = ("attention", "input")
#: How MAC's memory tokens are scaled before the attention: as retrieved, RMS-normalised with a
#: learned gain from 1, RMS-normalised with a learned gain from 0 (the tokens open as it grows),
#: or as retrieved times a learned gain from 1 (no normalisation: their magnitudes stay).
MAC_MEMORY_NORMS = ("none", "rms", "rms_zero", "gain")


class MemoryTokenGain(nn.Module):
    """A learned per-feature gain on MAC's memory tokens, from ``init`` (no normalisation).

    Args:
        dim: the model width.
        init: the gain's initial value.
    """

    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Float[Tensor, "*batch dim"]) -> Float[Tensor, "*batch dim"]:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}"


@dataclass(frozen=True)
class MACState:
    """Where a :class:`MACBlock` stands inside its stream.

    Attributes:
        memory: the memory after every token written so far (the running state; ``None``
            before the first write, or in a block without memory).
        segment_memory: the memory at the start of the unfinished segment, ``M_{n-1}``, which
            the segment's retrieval reads (equal to ``memory`` at a segment boundary).
        pending: ``(batch, pending, dim)``: the normalised inputs of the unfinished segment
            (``0 <= pending < segment``), from which its attention is recomputed.
    """

    memory: NeuralMemoryState | None
    segment_memory: NeuralMemoryState | None
    pending: Float[Tensor, "batch pending dim"]

    def detach(self) -> MACState:
        return MACState(detach_memory(self.memory), detach_memory(self.segment_memory), self.pending.detach())


class MACBlock(Block):
    """Memory as context: each segment reads the memory, attends, then teaches the memory.

    For segment ``n`` (``segment`` tokens ``S``, inputs ``h = norm(x)``)::

        M_{n-1} --retrieve(q(h_0..h_{N_l-1}))--> memory tokens m_0..m_{N_l-1}    (eq. 21)
        y = SegmentAttention([persistent | m | h])       causal; slot j seen by tokens r >= j (eq. 22)
        M(w), M_n = memory(w, M_{n-1})    write w_t, then read with q(w_t), token by token (eqs. 23-24)
        o = combine(y, M(w))              y (x) M*(w)                                   (eq. 25)
        x <- x + o;  x <- x + feedforward(ffn_norm(x))

    ``w`` is what the memory writes: ``h`` (``write="input"``) or ``y`` (``write="attention"``,
    eqs. 23-24 as written). The paper's reading (``y``, and ``(x)`` as a plain product) did not
    learn associative recall in the ablation of docs/guides/mac_ablation.md; ``TitansConfig``'s
    defaults are ``h`` and a normalised gate.

    Memory tokens and causality (a project decision; the paper leaves it open): the retrieval
    ``h_t = M*_{n-1}(q_t)`` gives one vector per segment position. Memory token ``j`` is the
    retrieval at position ``j`` (its query depends on the segment's tokens ``0..j`` only: the
    memory's causal convolution restarts at each segment), so it is shown to tokens ``r >= j``
    (``memory_visibility="causal"``; ``"own"`` shows token ``j`` its own retrieval only). With
    ``N_l = segment`` every token sees the retrievals of itself and the tokens before it; with
    ``N_l < segment`` the first ``N_l`` positions' retrievals serve the whole segment;
    ``N_l = 0`` drops the memory tokens. The store (eq. 24) is the memory's own token-wise
    causal write-then-read, so ``M*(w_t)`` reflects the segment up to ``t`` only (the paper
    reads after the whole segment, which would let token ``t`` see later tokens).

    Streaming: the state keeps the unfinished segment's inputs (at most ``segment - 1``), the
    memory at its start and the running memory. A call recomputes the unfinished segment's
    retrieval and attention (cost bounded by ``segment``), writes only the new tokens' ``w``,
    and returns only the new tokens' outputs: pieces of any size equal one call.

    Args:
        attention: segment attention (``memory_visibility`` ``"causal"`` or ``"own"``,
            ``memory_per_segment`` equal to ``num_memory_tokens`` when that is positive).
        memory: the neural memory, or ``None`` for an attention-only MAC layer.
        persistent: persistent tokens shared by all segments' attention (eq. 19), or ``None``.
        combine: merges ``y`` and ``M(w)`` (a :class:`~titans.gating.CombineGate`); needed
            with a memory.
        norm, feedforward, ffn_norm: the pre-norms and the feed-forward.
        num_memory_tokens: ``N_l`` (``0 <= N_l <= segment``; 0 without memory).
        write: what the memory writes and then reads its output with (``w``): ``"attention"``
            (the attention output ``y``, eqs. 23-24; the default of this class) or ``"input"``
            (the segment's normalised inputs ``h``, the stream the retrieval's queries come
            from; the default of ``TitansConfig``).
        retrieve_projection: a ``dim -> dim`` map applied to ``h`` before the retrieval's query
            projection (eq. 21's ``W_Q`` apart from the write's), or ``None`` to share the
            memory's query projection.
        memory_norm: a token-wise map applied to the memory tokens before the attention (an
            RMSNorm, as the segment's tokens are normalised, or a :class:`MemoryTokenGain`), or
            ``None`` to show the retrievals at the scale the memory returns them (the default;
            docs/guides/mac_ablation.md, round 2, measures the alternatives). The combine gate's
            ``M*(w)`` is not touched.
    """

    def __init__(
        self,
        *,
        attention: SegmentAttention,
        memory: NeuralMemory | None,
        persistent: PersistentMemory | None,
        combine: nn.Module | None,
        norm: nn.Module,
        feedforward: nn.Module,
        ffn_norm: nn.Module,
        num_memory_tokens: int,
        write: str = "attention",
        retrieve_projection: nn.Module | None = None,
        memory_norm: nn.Module | None = None,
    ) -> None:
        super().__init__(feedforward=feedforward, ffn_norm=ffn_norm, persistent=persistent)
        if not 0 <= num_memory_tokens <= attention.segment:
            raise ValueError(
                f"MACBlock: num_memory_tokens must be in [0, segment={attention.segment}], got {num_memory_tokens}"
            )
        if memory is None and num_memory_tokens:
            raise ValueError("MACBlock: memory tokens need a memory (num_memory_tokens must be 0 without one)")
        if memory is not None and combine is None:
            raise ValueError("MACBlock: a block with a memory needs a combine gate")
        if num_memory_tokens and (
            attention.memory_per_segment != num_memory_tokens or attention.memory_visibility not in ("causal", "own")
        ):
            raise ValueError(
                "MACBlock: the attention must have memory_per_segment == num_memory_tokens "
                f"({num_memory_tokens}) and memory_visibility 'causal' or 'own', got "
                f"{attention.memory_per_segment} and {attention.memory_visibility!r}"
            )
        if write not in MAC_WRITES:
            raise ValueError(f"MACBlock: write must be one of {MAC_WRITES}, got {write!r}")
        if retrieve_projection is not None and not num_memory_tokens:
            raise ValueError("MACBlock: a retrieve_projection needs memory tokens (num_memory_tokens > 0)")
        if memory_norm is not None and not num_memory_tokens:
            raise ValueError("MACBlock: a memory_norm needs memory tokens (num_memory_tokens > 0)")
        self.attention, self.memory, self.combine, self.norm = attention, memory, combine, norm
        self.segment = attention.segment
        self.num_memory_tokens = num_memory_tokens
        self.write = write
        self.retrieve_projection = retrieve_projection
        self.memory_norm = memory_norm

    def init_state(self, x: Tensor) -> MACState:
        return MACState(None, None, x.new_zeros(x.shape[0], 0, x.shape[2]))

    def forward(
        self, x: Float[Tensor, "batch seq dim"], state: MACState | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], MACState]:
        """Returns the block output for the new tokens ``x`` and the state after them."""
        if state is None:
            state = self.init_state(x)
        elif state.pending.shape[0] != x.shape[0] or state.pending.shape[2] != x.shape[2]:
            raise ValueError(
                f"MACBlock: the state is for (batch, dim) = ({state.pending.shape[0]}, {state.pending.shape[2]}), "
                f"the input is ({x.shape[0]}, {x.shape[2]})"
            )
        pending = state.pending.shape[1]
        stream = torch.cat([state.pending, self.norm(x)], dim=1) if pending else self.norm(x)
        persistent = None if self.persistent is None else self.persistent.tokens(x.shape[0])
        running, segment_memory = state.memory, state.segment_memory
        outs = []
        for start in range(0, stream.shape[1], self.segment):
            segment = stream[:, start : start + self.segment]
            new = max(start, pending) - start  # the segment's first token not returned before
            y = self.attend(segment, segment_memory, persistent)[:, new:]
            if self.memory is not None:
                written = y if self.write == "attention" else segment[:, new:]
                m, running = self.memory(written, running)  # write, then read M*(.) (eqs. 23-24)
                y = self.combine(y, m)  # eq. 25
            outs.append(y)
            if segment.shape[1] == self.segment:
                segment_memory = running
        done = stream.shape[1] - stream.shape[1] % self.segment
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        new_state = MACState(running, segment_memory, stream[:, done:].clone())
        return self.feedforward_residual(x + out), new_state

    def attend(
        self,
        segment: Float[Tensor, "batch seg dim"],
        segment_memory: NeuralMemoryState | None,
        persistent: Float[Tensor, "batch prefix dim"] | None,
    ) -> Float[Tensor, "batch seg dim"]:
        """Retrieval from ``M_{n-1}`` (eq. 21) and attention over ``[persistent | memory tokens |
        segment]`` (eq. 22) for one (possibly unfinished) segment."""
        tokens = None
        if self.memory is not None and self.num_memory_tokens:
            n = min(self.num_memory_tokens, segment.shape[1])
            # The queries' convolution restarts at the segment start: no history from the
            # previous segment's outputs (which the memory's own stream holds). A zero history is
            # what the convolution assumes at the start of a stream.
            read = None
            if segment_memory is not None:
                conv = segment_memory.conv
                read = dataclasses.replace(segment_memory, conv=None if conv is None else torch.zeros_like(conv))
            queries = segment[:, :n]
            if self.retrieve_projection is not None:
                queries = self.retrieve_projection(queries)
            tokens = self.memory.retrieve(queries, read)
            if self.memory_norm is not None:
                tokens = self.memory_norm(tokens)
        return self.attention(segment, memory=tokens, persistent=persistent)
