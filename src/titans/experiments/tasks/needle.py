"""Needle in a haystack (the token-level form of RULER's single-needle S-NIAH).

A needle ``NEEDLE key value`` sits at a depth in a haystack of noise tokens; the sequence ends
with ``QUERY key`` and the only scored label, at that last position, is the needle's value.
Tokens: ``0`` = NEEDLE marker, ``1`` = QUERY marker, keys ``[2, 2+q)``, values ``[2+q, 2+2q)``,
noise ``[2+2q, V)`` with ``q = (V - 2) // 4``: the three ranges never overlap.

Layout of one sequence of length ``L`` (``L >= 5``), needle start ``s = round(depth (L - 5))``::

    noise ... noise NEEDLE key value noise ... noise QUERY key
                                                        label: value (the only one)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from titans.experiments.tasks.base import IGNORE_INDEX, check_batch_args, check_int, masked_accuracy

__all__ = ["NeedleInHaystack"]

NEEDLE = 0
QUERY = 1
_FIXED = 5  # NEEDLE key value ... QUERY key


@dataclass(frozen=True)
class NeedleInHaystack:
    """One key-value needle in noise, asked for at the end.

    Args:
        vocab_size: ``V >= 6``; see the module docstring for how tokens are split.
        depth: where the needle starts, as a fraction of the haystack in ``[0, 1]`` (0: first
            token, 1: just before the query); ``None`` draws a depth per sequence.
        name: the task's name in :data:`~titans.TASKS`, ``"needle"`` (not an option of :func:`~titans.make_task`).
    """

    vocab_size: int = 64
    depth: float | None = None
    name: str = "needle"

    def __post_init__(self) -> None:
        check_int("NeedleInHaystack", "vocab_size", self.vocab_size, 6)
        if self.depth is not None and (
            isinstance(self.depth, bool) or not isinstance(self.depth, (int, float)) or not 0 <= self.depth <= 1
        ):
            raise ValueError(f"NeedleInHaystack.depth: must be in [0, 1] or None, got {self.depth!r}")

    @property
    def key_range(self) -> tuple[int, int]:
        q = (self.vocab_size - 2) // 4
        return 2, 2 + q

    @property
    def value_range(self) -> tuple[int, int]:
        q = (self.vocab_size - 2) // 4
        return 2 + q, 2 + 2 * q

    @property
    def noise_range(self) -> tuple[int, int]:
        return self.value_range[1], self.vocab_size

    def chance_accuracy(self) -> float:
        """Recall of a uniform guess among the needle's possible values."""
        low, high = self.value_range
        return 1 / (high - low)

    def needle_start(self, seq_len: int, depth: float) -> int:
        """Position of the NEEDLE marker for ``depth`` in a sequence of ``seq_len`` tokens."""
        return round(depth * (seq_len - _FIXED))

    def batch(
        self, generator: torch.Generator, batch_size: int, seq_len: int
    ) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
        """``(input_ids, labels)`` of ``batch_size`` sequences of ``seq_len`` tokens (CPU)."""
        check_batch_args("NeedleInHaystack", batch_size, seq_len, _FIXED)
        input_ids = torch.randint(*self.noise_range, (batch_size, seq_len), generator=generator)
        keys = torch.randint(*self.key_range, (batch_size,), generator=generator)
        values = torch.randint(*self.value_range, (batch_size,), generator=generator)
        if self.depth is None:
            starts = torch.randint(0, seq_len - _FIXED + 1, (batch_size,), generator=generator)
        else:
            starts = torch.full((batch_size,), self.needle_start(seq_len, self.depth), dtype=torch.long)
        rows = torch.arange(batch_size)
        input_ids[rows, starts] = NEEDLE
        input_ids[rows, starts + 1] = keys
        input_ids[rows, starts + 2] = values
        input_ids[:, -2] = QUERY
        input_ids[:, -1] = keys
        labels = torch.full((batch_size, seq_len), IGNORE_INDEX, dtype=torch.long)
        labels[:, -1] = values
        return input_ids, labels

    def accuracy(self, logits: Float[Tensor, "batch seq vocab"], labels: Int[Tensor, "batch seq"]) -> float:
        """Exact match of the needle's value (one scored position per sequence)."""
        return masked_accuracy(logits, labels)
