"""Attention-only blocks: the ``swa`` and ``transformer`` baselines, and memoryless layers."""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.attention import KVCache, SlidingWindowAttention
from memory_blocks.persistent import PersistentMemory

from titans.blocks.common import Block, detach_cache

__all__ = ["AttentionBlock", "AttentionState"]


@dataclass(frozen=True)
class AttentionState:
    """The attention's KV cache (persistent keys, then at most ``window - 1`` recent keys).

    Attributes:
        attention: the KV cache of the block's sliding-window attention.
    """

    attention: KVCache

    def detach(self) -> AttentionState:
        return AttentionState(detach_cache(self.attention))


class AttentionBlock(Block):
    """A Llama-style attention block (the baselines of the ablations)::

        y = SWA([persistent | norm(x)])      window W (``transformer``: W = max_seq_len,
                                             i.e. full causal attention within it)
        x <- x + y[persistent dropped];  x <- x + feedforward(ffn_norm(x))

    Args:
        attention: sliding-window attention with ``num_prefix`` equal to the persistent count.
        persistent: persistent tokens (eq. 19), or ``None``.
        norm, feedforward, ffn_norm: the pre-norms and the feed-forward.
    """

    def __init__(
        self,
        *,
        attention: SlidingWindowAttention,
        persistent: PersistentMemory | None,
        norm: nn.Module,
        feedforward: nn.Module,
        ffn_norm: nn.Module,
    ) -> None:
        super().__init__(feedforward=feedforward, ffn_norm=ffn_norm, persistent=persistent)
        self.check_attention_prefix(attention)
        self.attention, self.norm = attention, norm

    def forward(
        self, x: Float[Tensor, "batch seq dim"], state: AttentionState | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], AttentionState]:
        """Returns the block output for the new tokens ``x`` and the state after them."""
        first = state is None
        h = self.prepend_persistent(self.norm(x), first)
        y, cache = self.attention(h, cache=None if first else state.attention)
        return self.feedforward_residual(x + self.drop_persistent(y, first)), AttentionState(cache)
