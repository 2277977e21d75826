"""Pure functions: the memory's write-and-read (parallel and naive, in ``memorize_op``), read,
inner losses, and windowed and segment attention."""

from memory_blocks.functional.attention import segment_attention, sliding_window_attention, sliding_window_decode
from memory_blocks.functional.memorize_op.chunk import memorize
from memory_blocks.functional.memorize_op.fast_ops import DirectOps, DualOps, KeyPathOps
from memory_blocks.functional.losses import dot_product, huber, lp_error, squared_error
from memory_blocks.functional.memorize_op.naive import memorize_naive
from memory_blocks.functional.memorize_op.recurrence import ChunkCoefficients, chunk_coefficients, segment_products
from memory_blocks.functional.retrieve import retrieve
from memory_blocks.functional.state import MemoryState

__all__ = [
    "ChunkCoefficients",
    "DirectOps",
    "DualOps",
    "KeyPathOps",
    "MemoryState",
    "chunk_coefficients",
    "dot_product",
    "huber",
    "lp_error",
    "memorize",
    "memorize_naive",
    "retrieve",
    "segment_attention",
    "segment_products",
    "sliding_window_attention",
    "sliding_window_decode",
    "squared_error",
]
