"""What every block shares: the pre-norm SwiGLU feed-forward residual, and state helpers."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.attention import KVCache
from memory_blocks.neural_memory import NeuralMemoryState
from memory_blocks.persistent import PersistentMemory

__all__ = ["Block", "detach_cache", "detach_memory"]


class Block(nn.Module):
    """Base of every Titans block: ``x <- x + feedforward(ffn_norm(x))`` after the mixer.

    Subclasses implement ``forward(x, state) -> (x, state)``: a pre-norm residual mixer (the
    variant's combination of attention and memory), then :meth:`feedforward_residual`.

    Args:
        feedforward: the feed-forward network (a SwiGLU in the built-in blocks).
        ffn_norm: the norm before it (an RMSNorm in the built-in blocks).
        persistent: the persistent tokens (eq. 19), or ``None`` for none.
    """

    def __init__(
        self, *, feedforward: nn.Module, ffn_norm: nn.Module, persistent: PersistentMemory | None
    ) -> None:
        super().__init__()
        self.feedforward = feedforward
        self.ffn_norm = ffn_norm
        self.persistent = persistent if persistent is not None and persistent.num_tokens > 0 else None

    @property
    def num_persistent(self) -> int:
        return 0 if self.persistent is None else self.persistent.num_tokens

    def check_attention_prefix(self, attention: nn.Module) -> None:
        """The attention must keep exactly the persistent tokens visible as its prefix."""
        if attention.num_prefix != self.num_persistent:
            raise ValueError(
                f"{type(self).__name__}: attention.num_prefix ({attention.num_prefix}) must equal "
                f"the number of persistent tokens ({self.num_persistent})"
            )

    def feedforward_residual(self, x: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch seq dim"]:
        return x + self.feedforward(self.ffn_norm(x))

    def prepend_persistent(self, x: Float[Tensor, "batch seq dim"], first: bool) -> Tensor:
        """``[persistent | x]`` on the first call of a stream, ``x`` afterwards (eq. 19)."""
        if first and self.persistent is not None:
            return self.persistent(x)
        return x

    def drop_persistent(self, y: Tensor, first: bool) -> Tensor:
        """Removes the persistent positions that :meth:`prepend_persistent` added."""
        return y[:, self.num_persistent :] if first else y


def detach_memory(state: NeuralMemoryState | None) -> NeuralMemoryState | None:
    return None if state is None else state.detach()


def detach_cache(cache: KVCache | None) -> KVCache | None:
    return None if cache is None else cache.detach()
