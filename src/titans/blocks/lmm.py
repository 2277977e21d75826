"""LMM: the long-term memory alone, as a sequence mixer (paper section 4.3, "LMM")."""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.neural_memory import NeuralMemory, NeuralMemoryState
from memory_blocks.persistent import PersistentMemory

from titans.blocks.common import Block, detach_memory

__all__ = ["LMMBlock", "LMMState"]


@dataclass(frozen=True)
class LMMState:
    """The memory's state (it has written the persistent tokens first).

    Attributes:
        memory: the state of the block's neural memory after every token written so far.
    """

    memory: NeuralMemoryState

    def detach(self) -> LMMState:
        return LMMState(detach_memory(self.memory))


class LMMBlock(Block):
    """The memory alone, no attention::

        m = memory([persistent | norm(x)])      write then read, token by token (eqs. 12-16)
        x <- x + m[persistent dropped];  x <- x + feedforward(ffn_norm(x))

    Args:
        memory: the neural memory.
        persistent: persistent tokens written into the memory before the sequence, or ``None``.
        norm, feedforward, ffn_norm: the pre-norms and the feed-forward.
    """

    def __init__(
        self,
        *,
        memory: NeuralMemory,
        persistent: PersistentMemory | None,
        norm: nn.Module,
        feedforward: nn.Module,
        ffn_norm: nn.Module,
    ) -> None:
        super().__init__(feedforward=feedforward, ffn_norm=ffn_norm, persistent=persistent)
        self.memory, self.norm = memory, norm

    def forward(
        self, x: Float[Tensor, "batch seq dim"], state: LMMState | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], LMMState]:
        """Returns the block output for the new tokens ``x`` and the state after them."""
        first = state is None
        h = self.prepend_persistent(self.norm(x), first)
        m, memory = self.memory(h, None if first else state.memory)
        return self.feedforward_residual(x + self.drop_persistent(m, first)), LMMState(memory)
