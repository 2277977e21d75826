"""MAG: memory as a gate (paper section 4.2, eqs. 26-28)."""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.attention import KVCache, SlidingWindowAttention
from memory_blocks.neural_memory import NeuralMemory, NeuralMemoryState
from memory_blocks.persistent import PersistentMemory

from titans.blocks.common import Block, detach_cache, detach_memory

__all__ = ["MAGBlock", "MAGState"]


@dataclass(frozen=True)
class MAGState:
    """The attention's KV cache (persistent keys kept forever, then the last ``window - 1``)
    and the memory's state; both already hold the persistent tokens.

    Attributes:
        attention: the KV cache of the block's sliding-window attention.
        memory: the state of the block's neural memory after every token written so far.
    """

    attention: KVCache
    memory: NeuralMemoryState

    def detach(self) -> MAGState:
        return MAGState(detach_cache(self.attention), detach_memory(self.memory))


class MAGBlock(Block):
    """Memory as a gate: sliding-window attention and the memory side by side, gated.

    With ``h = norm(x)`` and ``x~ = [persistent | h]`` (eq. 26)::

        y = SWA(x~)                     (eq. 27; persistent keys always visible)
        m = memory(x~)                  (the memory writes and reads x~, token by token)
        o = combine(y, m)               (eq. 28: normalise both, non-linear gate)
        x <- x + o[persistent dropped];  x <- x + feedforward(ffn_norm(x))

    Streaming: the persistent tokens enter the first call only (the state is ``None``); the
    KV cache keeps their keys and the memory has written them first.

    Args:
        attention: sliding-window attention with ``num_prefix`` equal to the persistent count.
        memory: the neural memory.
        persistent: persistent tokens (eq. 19), or ``None``.
        combine: the gate (a :class:`~titans.gating.CombineGate`).
        norm, feedforward, ffn_norm: the pre-norms and the feed-forward.
    """

    def __init__(
        self,
        *,
        attention: SlidingWindowAttention,
        memory: NeuralMemory,
        persistent: PersistentMemory | None,
        combine: nn.Module,
        norm: nn.Module,
        feedforward: nn.Module,
        ffn_norm: nn.Module,
    ) -> None:
        super().__init__(feedforward=feedforward, ffn_norm=ffn_norm, persistent=persistent)
        self.check_attention_prefix(attention)
        self.attention, self.memory, self.combine, self.norm = attention, memory, combine, norm

    def forward(
        self, x: Float[Tensor, "batch seq dim"], state: MAGState | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], MAGState]:
        """Returns the block output for the new tokens ``x`` and the state after them."""
        first = state is None
        h = self.prepend_persistent(self.norm(x), first)
        y, cache = self.attention(h, cache=None if first else state.attention)
        m, memory = self.memory(h, None if first else state.memory)
        o = self.drop_persistent(self.combine(y, m), first)
        return self.feedforward_residual(x + o), MAGState(cache, memory)
