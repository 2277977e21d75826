"""The memory's state between calls: fast weights, momentum, and the unfinished chunk."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MemoryState"]


@dataclass(frozen=True)
class MemoryState:
    """Where a memory stands after the tokens it has written so far.

    Every tensor has the leading shape ``(batch, heads)`` followed by the parameter's own
    shape (e.g. ``(batch, heads, dim_out, dim_in)`` for a linear fast weight).

    Attributes:
        weights: ``W_t``, the fast weights after the last written token (name -> tensor).
            Retrieval reads these. At a chunk boundary they are also the weights at which the
            next chunk's gradients are taken (paper eq. 16).
        momentum: ``S_t``, the surprise momentum after the last written token (paper eq. 13).
            Plain gradient descent (no momentum gate) leaves it unchanged.
        chunk_weights: the weights at the start of the unfinished chunk, where the gradients of
            its remaining tokens are taken; ``None`` at a chunk boundary.
        offset: tokens already written into the unfinished chunk (0 at a chunk boundary).
        chunk_size: the chunk size of the ``memorize`` call that produced the state, or
            ``None`` (unknown: a state built by hand, or by ``init_state``). A state with a
            chunk size is refused by a call with another one: its momentum, its unfinished
            chunk and its chunk boundaries belong to that chunking.
        window: with the Omega rule (``omega_window = c > 1``), the last ``c - 1`` tokens the
            next tokens' inner losses still include: ``{"k": (batch, heads, c - 1, dim_in),
            "v": (batch, heads, c - 1, dim_out), "weight": (batch, heads, c - 1)}`` (tokens
            before the sequence start have weight 0); ``None`` otherwise.

    A user may replace ``weights`` (``dataclasses.replace``) at a chunk boundary to load or
    edit a memory; mid-chunk, the gradients of the chunk's remaining tokens are still taken at
    ``chunk_weights``.
    """

    weights: dict[str, Tensor]
    momentum: dict[str, Tensor]
    chunk_weights: dict[str, Tensor] | None = None
    offset: int = 0
    chunk_size: int | None = None
    window: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        for field, value in (("weights", self.weights), ("momentum", self.momentum)):
            if not isinstance(value, dict) or not value:
                raise TypeError(
                    f"MemoryState: {field} must be a non-empty dict of name -> tensor, got "
                    f"{type(value).__name__}" + (" (empty)" if isinstance(value, dict) else "")
                )
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise TypeError(f"MemoryState: offset must be an integer, got {self.offset!r}")
        if self.chunk_size is not None:
            if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int):
                raise TypeError(
                    f"MemoryState: chunk_size must be an integer or None, got {self.chunk_size!r}"
                )
            if not 0 <= self.offset < self.chunk_size:
                raise ValueError(
                    f"MemoryState: offset must lie in [0, chunk_size={self.chunk_size}), "
                    f"got {self.offset}"
                )
        if self.window is not None and (
            not isinstance(self.window, dict) or set(self.window) != {"k", "v", "weight"}
            or not all(isinstance(t, Tensor) for t in self.window.values())
        ):
            raise TypeError(
                "MemoryState: window must be None or a dict of tensors with keys 'k', 'v', 'weight'"
            )
        if set(self.weights) != set(self.momentum):
            raise ValueError(
                "MemoryState: weights and momentum must name the same tensors, got "
                f"{sorted(self.weights)} and {sorted(self.momentum)}"
            )
        if self.offset < 0:
            raise ValueError(f"MemoryState: offset must be >= 0, got {self.offset}")
        if (self.offset == 0) != (self.chunk_weights is None):
            raise ValueError(
                "MemoryState: chunk_weights must be given exactly when offset > 0 "
                f"(offset={self.offset}, chunk_weights is {'None' if self.chunk_weights is None else 'set'})"
            )
        tensors = [("weights", self.weights), ("momentum", self.momentum)]
        if self.chunk_weights is not None:
            if set(self.chunk_weights) != set(self.weights):
                raise ValueError(
                    "MemoryState: chunk_weights must name the same tensors as weights, got "
                    f"{sorted(self.chunk_weights)} and {sorted(self.weights)}"
                )
            tensors.append(("chunk_weights", self.chunk_weights))
        for field, d in tensors:
            for name, t in d.items():
                if not isinstance(t, Tensor) or not t.is_floating_point():
                    what = t.dtype if isinstance(t, Tensor) else type(t).__name__
                    raise TypeError(
                        f"MemoryState: {field}[{name!r}] must be a floating-point tensor, got {what}"
                    )
        for name, w in self.weights.items():
            m = self.momentum[name]
            if w.shape != m.shape:
                raise ValueError(
                    f"MemoryState: weights[{name!r}] has shape {tuple(w.shape)} but "
                    f"momentum[{name!r}] has shape {tuple(m.shape)}"
                )
            if w.ndim < 2:
                raise ValueError(
                    f"MemoryState: weights[{name!r}] must have leading (batch, heads) dimensions, "
                    f"got shape {tuple(w.shape)}"
                )

    @property
    def batch(self) -> int:
        return next(iter(self.weights.values())).shape[0]

    @property
    def heads(self) -> int:
        return next(iter(self.weights.values())).shape[1]

    def without_subnormals(self) -> MemoryState:
        """The same state with every subnormal entry (below the dtype's smallest normal number,
        e.g. 1.2e-38 in float32) set to zero.

        Entries that small are far below rounding, but a state that keeps them makes every later
        product with it run on subnormal arithmetic, many times slower on a CPU; entries that are
        rarely written (a key direction seen once, then forgotten) drift there over long streams.
        ``memorize`` and ``memorize_naive`` return their states this way.
        """

        def clean(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: _flush_subnormal(v) for k, v in d.items()}

        cw = None if self.chunk_weights is None else clean(self.chunk_weights)
        return MemoryState(
            clean(self.weights), clean(self.momentum), cw, self.offset, self.chunk_size, self.window
        )

    def detach(self) -> MemoryState:
        """The same state cut from the autograd graph (truncated backpropagation)."""
        cw = None if self.chunk_weights is None else _detach(self.chunk_weights)
        window = None if self.window is None else _detach(self.window)
        return MemoryState(
            _detach(self.weights), _detach(self.momentum), cw, self.offset, self.chunk_size, window
        )


def _flush_subnormal(t: Tensor) -> Tensor:
    if not t.is_floating_point() or 0 in t.stride():
        return t  # an expanded constant (the initial momentum's zero) stays as it is
    tiny = torch.finfo(t.dtype).tiny
    # Exact zeros pass through: replacing them by a constant would cut their gradient (a state
    # at W_0 = 0, e.g. a LinearMemory's, mid-chunk).
    small = (t.abs() < tiny) & (t != 0)
    return torch.where(small, torch.zeros((), dtype=t.dtype, device=t.device), t)


def _detach(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in d.items()}
