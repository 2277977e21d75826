"""Next-byte prediction on the user's own text: a UTF-8 file or a folder of them, read as bytes.

Tokens are bytes (``vocab_size = 256``), so any text works without a tokenizer and the loss in
bits per byte is comparable across models and corpora. The corpus is every file the path names
(a folder: the files matching ``pattern`` below it, in sorted order, joined by a newline), read
once per process. Its last ``heldout_fraction`` of bytes is held out: training batches come from
the first part (``split="train"``), evaluation batches from the held-out part
(:meth:`TextTask.for_evaluation`), so a model is never scored on bytes it trained on::

    corpus bytes:  [ train ........................................ | held out ...... ]
    a batch row:   a window of seq_len + 1 bytes at a random offset in its split;
                   input_ids = window[:-1], labels = window[1:] (every position scored)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from titans.experiments.tasks.base import check_batch_args, masked_accuracy

__all__ = ["BYTE_VOCAB", "TEXT_SPLITS", "TextTask", "bits_per_byte"]

#: Tokens a byte-level model needs: one per byte value.
BYTE_VOCAB = 256
#: The parts of the corpus a :class:`TextTask` draws from.
TEXT_SPLITS = ("train", "heldout")


def bits_per_byte(loss: float) -> float:
    """A next-byte cross-entropy in nats (``TitansLM``'s loss) in bits per byte: ``loss / ln 2``."""
    return loss / math.log(2)


@dataclass(frozen=True)
class TextTask:
    """Next-byte prediction on the text at ``data``.

    Args:
        data: a UTF-8 text file, or a folder whose files matching ``pattern`` (searched
            recursively) are all UTF-8. Stored as an absolute path, so a resumed run finds it
            from any working directory.
        pattern: glob of the files to read when ``data`` is a folder (e.g. ``"*.py"``);
            ignored for a file.
        heldout_fraction: share of the corpus' bytes, at its end, kept for evaluation; in
            ``(0, 0.5]``.
        split: ``"train"`` (the first part) or ``"heldout"`` (the last part).
        vocab_size: the model's vocabulary, at least 256 (the bytes are tokens ``0..255``; any
            further tokens are never used).
        name: the task's name in :data:`~titans.TASKS`, ``"text"`` (not an option of :func:`~titans.make_task`).

    Raises:
        ValueError: ``data`` does not exist, names no file, holds a file that is not UTF-8 (the
            file and byte offset are named), or is too short for the split; bad options.
    """

    data: str = ""
    pattern: str = "*"
    heldout_fraction: float = 0.1
    split: str = "train"
    vocab_size: int = BYTE_VOCAB
    name: str = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(
                f"TextTask.data: expected the path of a UTF-8 file or folder (the command line's --data PATH), "
                f"got {self.data!r}"
            )
        path = Path(self.data).expanduser()
        if not path.exists():
            raise ValueError(f"TextTask.data: {path} does not exist")
        object.__setattr__(self, "data", str(path.resolve()))
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"TextTask.pattern: expected a glob such as '*.txt', got {self.pattern!r}")
        fraction = self.heldout_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
            raise ValueError(f"TextTask.heldout_fraction: must be a number in (0, 0.5], got {fraction!r}")
        if self.split not in TEXT_SPLITS:
            raise ValueError(f"TextTask.split: must be one of {TEXT_SPLITS}, got {self.split!r}")
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < BYTE_VOCAB:
            raise ValueError(
                f"TextTask.vocab_size: tokens are bytes, so a model needs at least 256 (--vocab-size 256), "
                f"got {self.vocab_size!r}"
            )
        _corpus(self.data, self.pattern)  # read (and check) now: a bad path fails here, not at step 1

    def for_evaluation(self) -> TextTask:
        """The same corpus, drawing from the held-out part."""
        return replace(self, split="heldout")

    def tokens(self) -> UInt8[Tensor, " n"]:
        """The bytes of this task's split, as a ``uint8`` tensor (CPU)."""
        corpus = _corpus(self.data, self.pattern)
        cut = len(corpus) - max(1, int(len(corpus) * self.heldout_fraction))
        return corpus[:cut] if self.split == "train" else corpus[cut:]

    def batch(
        self, generator: torch.Generator, batch_size: int, seq_len: int
    ) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
        """``(input_ids, labels)``: ``batch_size`` windows of ``seq_len + 1`` bytes at random
        offsets in the split, as inputs and next-byte labels (every position scored)."""
        check_batch_args("TextTask", batch_size, seq_len, 1)
        part = self.tokens()
        room = len(part) - seq_len
        if room < 1:
            raise ValueError(
                f"TextTask.batch: the {self.split} split of {self.data} has {len(part):,} bytes, too few for "
                f"windows of seq_len + 1 = {seq_len + 1}; use a larger corpus or shorter sequences"
            )
        starts = torch.randint(0, room, (batch_size,), generator=generator)
        rows = starts[:, None] + torch.arange(seq_len + 1)
        windows = part[rows].long()
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def accuracy(self, logits: Float[Tensor, "batch seq vocab"], labels: Int[Tensor, "batch seq"]) -> float:
        """Share of bytes predicted right (teacher forced)."""
        return masked_accuracy(logits, labels)


@functools.lru_cache(maxsize=4)
def _corpus(data: str, pattern: str) -> Tensor:
    """Every byte of the files ``data`` names, checked to be UTF-8, as one ``uint8`` tensor."""
    path = Path(data)
    files = [path] if path.is_file() else sorted(p for p in path.rglob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"TextTask.data: no file matching {pattern!r} under {path}")
    parts = []
    for file in files:
        raw = file.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"TextTask.data: {file} is not UTF-8 (byte {err.start}); choose the files with the "
                "task's pattern option (e.g. --task-arg pattern='*.txt')"
            ) from err
        parts.append(raw)
    joined = b"\n".join(parts)
    if len(joined) < 4:
        raise ValueError(f"TextTask.data: {path} holds {len(joined)} bytes; a corpus needs more")
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8)
