"""MAL: memory as a layer (paper section 4.3, eqs. 29-31)."""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.attention import KVCache, SlidingWindowAttention
from memory_blocks.neural_memory import NeuralMemory, NeuralMemoryState
from memory_blocks.persistent import PersistentMemory

from titans.blocks.common import Block, detach_cache, detach_memory

__all__ = ["MALBlock", "MALState"]


@dataclass(frozen=True)
class MALState:
    """The memory's state and the attention's KV cache (both hold the persistent tokens).

    Attributes:
        memory: the state of the block's neural memory after every token written so far.
        attention: the KV cache of the block's sliding-window attention (over the memory's output).
    """

    memory: NeuralMemoryState
    attention: KVCache

    def detach(self) -> MALState:
        return MALState(detach_memory(self.memory), detach_cache(self.attention))


class MALBlock(Block):
    """Memory as a layer: the memory, then sliding-window attention on its output.

    Two pre-norm residual sublayers over the stream ``s = [persistent | x]`` (eq. 29)::

        s <- s + memory(norm(s))              y = M(x~)        (eq. 30)
        s <- s + SWA(attention_norm(s))       o = SW-Attn(y)   (eq. 31; persistent positions
                                                                 are the always-visible prefix)
        x <- s[persistent dropped];  x <- x + feedforward(ffn_norm(x))

    The persistent tokens enter the residual stream at the block input (on the first call of a
    stream) and leave it at the block output.

    Args:
        memory: the neural memory.
        attention: sliding-window attention with ``num_prefix`` equal to the persistent count.
        persistent: persistent tokens (eq. 19), or ``None``.
        norm: the norm before the memory.
        attention_norm: the norm before the attention.
        feedforward, ffn_norm: the feed-forward and its norm.
    """

    def __init__(
        self,
        *,
        memory: NeuralMemory,
        attention: SlidingWindowAttention,
        persistent: PersistentMemory | None,
        norm: nn.Module,
        attention_norm: nn.Module,
        feedforward: nn.Module,
        ffn_norm: nn.Module,
    ) -> None:
        super().__init__(feedforward=feedforward, ffn_norm=ffn_norm, persistent=persistent)
        self.check_attention_prefix(attention)
        self.memory, self.attention = memory, attention
        self.norm, self.attention_norm = norm, attention_norm

    def forward(
        self, x: Float[Tensor, "batch seq dim"], state: MALState | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], MALState]:
        """Returns the block output for the new tokens ``x`` and the state after them."""
        first = state is None
        s = self.prepend_persistent(x, first)
        m, memory = self.memory(self.norm(s), None if first else state.memory)
        s = s + m
        y, cache = self.attention(self.attention_norm(s), cache=None if first else state.attention)
        s = self.drop_persistent(s + y, first)
        return self.feedforward_residual(s), MALState(memory, cache)
