"""Multi-query associative recall (MQAR), as defined in the Zoology work (Arora et al., 2023).

Keys come from ``[1, V/2)``, values from ``[V/2, V)``; token ``0`` fills the gaps. A sequence
starts with ``N`` key-value pairs ``k1 v1 ... kN vN``; afterwards every key appears exactly once
more, at a distance drawn from a power law (short distances are likelier), and the label at that
position is the key's value. Every other label is ``-100``: the loss is on recalled values only.

Layout of one sequence of length ``L`` (``4 N <= L``)::

    k1 v1 k2 v2 ... kN vN | 0 0 kj 0 0 0 ki 0 ...     (queries on even offsets of the tail)
                            labels:  vj       vi      (at the query positions, -100 elsewhere)

With ``queries_at_end=True`` every query sits in the last ``2 N`` positions (in random order),
so each pair lies at least ``L - 4 N`` tokens before its query: beyond a sliding window of that
size or less, recall must come from a memory::

    k1 v1 ... kN vN 0 0 0 ... 0 0 0 | kj 0 ki 0 ...
                                      vj   vi         (labels)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from titans.experiments.tasks.base import IGNORE_INDEX, check_batch_args, check_int, masked_accuracy

__all__ = ["MQAR"]


@dataclass(frozen=True)
class MQAR:
    """MQAR with ``num_pairs`` key-value pairs over a vocabulary of ``vocab_size`` tokens.

    Args:
        vocab_size: ``V``; keys are ``[1, V/2)``, values ``[V/2, V)``.
        num_pairs: ``N`` pairs per sequence; needs ``N < V/2`` distinct keys and values, and
            ``4 N <= seq_len``.
        alpha: power-law exponent of the query distances, ``p(gap = i) ~ i^(alpha - 1)``
            (Zoology's default 0.1).
        queries_at_end: put all ``N`` queries in the last ``2 N`` positions instead of drawing
            their distances (``alpha`` is then unused).
        name: the task's name in :data:`~titans.TASKS`, ``"mqar"`` (not an option of :func:`~titans.make_task`).
    """

    vocab_size: int = 64
    num_pairs: int = 4
    alpha: float = 0.1
    queries_at_end: bool = False
    name: str = "mqar"

    def __post_init__(self) -> None:
        check_int("MQAR", "vocab_size", self.vocab_size, 4)
        check_int("MQAR", "num_pairs", self.num_pairs, 1)
        if self.num_pairs > self.vocab_size // 2 - 1:
            raise ValueError(
                f"MQAR.num_pairs: {self.num_pairs} distinct keys need vocab_size >= {2 * self.num_pairs + 2}, "
                f"got {self.vocab_size}"
            )
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"MQAR.alpha: must be in (0, 1], got {self.alpha!r}")
        if not isinstance(self.queries_at_end, bool):
            raise ValueError(f"MQAR.queries_at_end: must be true or false, got {self.queries_at_end!r}")

    def chance_accuracy(self) -> float:
        """Recall of a uniform guess among the values (the upper half of the vocabulary)."""
        return 1 / (self.vocab_size - self.vocab_size // 2)

    def batch(
        self, generator: torch.Generator, batch_size: int, seq_len: int
    ) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
        """``(input_ids, labels)`` of ``batch_size`` sequences of ``seq_len`` tokens (CPU)."""
        check_batch_args("MQAR", batch_size, seq_len, 1)
        n = self.num_pairs
        if 4 * n > seq_len:
            raise ValueError(f"MQAR.batch: seq_len must be >= 4 * num_pairs = {4 * n}, got {seq_len}")
        half = self.vocab_size // 2
        # distinct keys and values per sequence: argsort of uniform noise is a random permutation
        keys = 1 + torch.rand(batch_size, half - 1, generator=generator).argsort(-1)[:, :n]
        values = half + torch.rand(batch_size, self.vocab_size - half, generator=generator).argsort(-1)[:, :n]
        context = 2 * n
        space = (seq_len - context) // 2
        if self.queries_at_end:  # a random order of the keys in the last n even offsets
            gaps = (space - n) + torch.rand(batch_size, n, generator=generator).argsort(-1)
        else:
            weights = torch.arange(1, space + 1, dtype=torch.float64) ** (self.alpha - 1)
            gaps = torch.multinomial(weights.expand(batch_size, space), n, replacement=False, generator=generator)
        input_ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
        input_ids[:, 0:context:2] = keys
        input_ids[:, 1:context:2] = values
        positions = context + 2 * gaps
        input_ids.scatter_(1, positions, keys)
        labels = torch.full((batch_size, seq_len), IGNORE_INDEX, dtype=torch.long)
        labels.scatter_(1, positions, values)
        return input_ids, labels

    def accuracy(self, logits: Float[Tensor, "batch seq vocab"], labels: Int[Tensor, "batch seq"]) -> float:
        """Share of queried keys whose value is the most likely next token."""
        return masked_accuracy(logits, labels)
