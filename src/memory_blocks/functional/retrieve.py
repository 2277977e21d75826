"""Reading the memory without writing to it (paper eq. 15)."""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor

from memory_blocks.functional.state import MemoryState
from memory_blocks.functional.validate import check_dtype, check_state, check_tensor, memory_dtype

__all__ = ["retrieve"]


def retrieve(
    memory: Any, state: MemoryState, q: Float[Tensor, "batch heads seq dim_in"]
) -> Float[Tensor, "batch heads seq dim_out"]:
    """``y_t = f(W; q_t)`` with the weights of ``state``, for every query (eq. 15: ``M*(q_t)``).

    Args:
        memory: the memory model the state belongs to.
        state: the memory as it stands (``state.weights``, shape ``(batch, heads, *shape)``).
        q: ``(batch, heads, seq, dim_in)`` queries, in the dtype of the memory's weights.

    Returns:
        ``(batch, heads, seq, dim_out)`` the memory's output for each query.

    Raises:
        ValueError: on a bad shape, an empty sequence, a dtype other than the memory model's
            weights', or a state that belongs to another memory model, batch, heads or dtype.
        TypeError: when ``q`` is not a tensor or ``state`` not a :class:`MemoryState`.
    """
    fn = "retrieve"
    check_tensor(fn, "q", q)
    if q.ndim != 4:
        raise ValueError(f"retrieve: q must have shape (batch, heads, seq, dim_in), got {tuple(q.shape)}")
    if q.shape[-1] != memory.dim_in:
        raise ValueError(
            f"retrieve: queries have {q.shape[-1]} features but the memory model expects "
            f"dim_in = {memory.dim_in}"
        )
    if q.shape[2] < 1:
        raise ValueError("retrieve: the sequence is empty (seq = 0)")
    check_dtype(fn, "q", q, memory_dtype(memory))
    check_state(fn, memory, state, q.shape[0], q.shape[1], None, like=q)
    return memory.forward_with(state.weights, q)
