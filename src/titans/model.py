"""``TitansLM``: embedding, Titans blocks, final norm, output head; streaming forward and generate."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from memory_blocks.layers.norm import RMSNorm

from titans.builders import build_block
from titans.checkpoint_io import load_model_directory, save_model_directory
from titans.config import SPEED_FIELDS, TitansConfig

__all__ = [
    "GenerateOutput", "TitansLM", "TitansOutput", "TitansState", "check_ids", "check_sampling", "count_parameters",
    "state_signature",
]

IGNORE_INDEX = -100


#: Integer dtypes accepted as token ids and labels.
ID_DTYPES = (torch.int64, torch.int32)


def state_signature(config: TitansConfig) -> tuple[tuple[str, Any], ...]:
    """What a :class:`TitansState` belongs to: every field of ``config`` that shapes the state
    or what it means (variant, sizes, memory settings, chunk size, window, segment length, ...),
    as ``(field, value)`` pairs. Only the speed knobs (``SPEED_FIELDS``: they never change
    results) are left out."""
    pairs = []
    for f in dataclasses.fields(config):
        if f.name in SPEED_FIELDS:
            continue
        value = getattr(config, f.name)
        if isinstance(value, dict):
            value = tuple(sorted(value.items()))
        pairs.append((f.name, value))
    return tuple(pairs)


@dataclass(frozen=True)
class TitansState:
    """Everything a :class:`TitansLM` needs to continue a batch of sequences.

    Attributes:
        blocks: one state per block (memory states, KV caches, MAC's unfinished segment).
        position: tokens consumed so far.
        signature: the config the state belongs to (:func:`state_signature`); a model of any
            other config refuses the state, naming the fields that differ.
        batch: the number of sequences it continues.
    """

    blocks: tuple[Any, ...]
    position: int
    signature: tuple[tuple[str, Any], ...] = ()
    batch: int = 0

    def detach(self) -> TitansState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return TitansState(tuple(s.detach() for s in self.blocks), self.position, self.signature, self.batch)


@dataclass(frozen=True)
class TitansOutput:
    """What :meth:`TitansLM.forward` returns.

    Attributes:
        logits: ``(batch, seq, vocab)`` the next-token logits of each position.
        state: the state to pass with the next piece of the sequences.
        loss: the mean cross-entropy over labelled positions, when labels were given; else ``None``.
    """

    logits: Float[Tensor, "batch seq vocab"]
    state: TitansState
    loss: Float[Tensor, ""] | None = None


@dataclass(frozen=True)
class GenerateOutput:
    """What :meth:`TitansLM.generate` returns.

    Attributes:
        tokens: ``(batch, new)`` the sampled tokens.
        state: the state after the prompt and all of the sampled tokens.
    """

    tokens: Int[Tensor, "batch new"]
    state: TitansState


class TitansLM(nn.Module):
    """A causal language model of Titans blocks (paper section 4; Llama-style macro design)::

        input_ids -> embedding -> block_0 -> ... -> block_{depth-1} -> RMSNorm -> head -> logits

    The blocks are chosen by ``config.variant`` and built by :mod:`titans.builders`.

    Streaming: ``forward(ids, state)`` continues the sequences where ``state`` left them; feeding
    a sequence in pieces of any size, down to one token, gives the logits of one call. The
    state's size does not grow with the sequence (memory states, bounded KV caches, at most
    one unfinished MAC segment), except for the ``transformer`` baseline, whose cache grows
    up to ``max_seq_len``.

    Args:
        config: the model's configuration (variant, sizes and components).

    Raises:
        ValueError: when ``config`` is not a :class:`TitansConfig`.
    """

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        if not isinstance(config, TitansConfig):
            raise ValueError(f"TitansLM: config must be a TitansConfig, got {type(config).__name__}")
        self.config = config
        self._signature = state_signature(config)
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(build_block(config, i) for i in range(config.depth))
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embedding.weight

    def num_parameters(self) -> int:
        """Trainable parameters (a tied matrix counted once)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Writes the model into ``directory``: ``config.json``, ``model.safetensors`` (a tied
        matrix stored once) and, last, ``manifest.json`` (each file's sha256), each file durably
        (temporary name, fsync, rename, directory fsync). Never pickles.

        Args:
            directory: the checkpoint directory (created if needed).

        Returns:
            ``directory`` as a ``Path``.

        Raises:
            FloatingPointError: a parameter or buffer holds NaN or inf (named); nothing is written.
            TypeError: ``directory`` is not a str or path.
        """
        return save_model_directory(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> TitansLM:
        """The model saved in ``directory`` (by :meth:`save_pretrained`, ``titans train`` or
        ``titans.save_pretrained``), in the dtype it was saved in, on ``device``; its files are
        checked against the manifest first.

        Args:
            directory: a checkpoint directory.
            device: where the model goes.

        Raises:
            titans.checkpoint.CheckpointError: a file is missing, does not match its manifest, is
                unreadable, or the weights do not fit the config (the message names the file).
            ValueError: ``device`` is not a device, or CUDA is not available.
        """
        return load_model_directory(directory, cls, device=device)

    def forward(
        self,
        input_ids: Int[Tensor, "batch seq"],
        state: TitansState | None = None,
        labels: Int[Tensor, "batch seq"] | None = None,
    ) -> TitansOutput:
        """Logits for every position of ``input_ids``, continuing from ``state``.

        Args:
            input_ids: ``(batch, seq)`` token ids, ``seq >= 1``.
            state: where an earlier call left these sequences, or ``None`` to start.
            labels: ``(batch, seq)``: the target of each position (already shifted: the label of
                position ``t`` is the token that follows it), ``-100`` where no loss is taken.
                Aligned targets make the loss of a sequence fed in pieces add up exactly.

        Raises:
            TypeError: ``input_ids`` or ``labels`` is not an int64/int32 tensor (float, uint8 and
                bool ids are refused, not cast), or ``state`` is not a :class:`TitansState`.
            ValueError: ``input_ids`` is not ``(batch >= 1, seq >= 1)``, holds an id outside
                ``[0, vocab_size)`` or lies on another device than the model; ``labels`` has
                another shape, holds a value outside ``[0, vocab_size)`` other than ``-100``, or
                every label is ``-100`` (the mean over no position is undefined: pass
                ``labels=None`` for the logits alone); ``state`` belongs to another config
                (the message names the fields that differ) or another batch size.
        """
        self._check(input_ids, state, labels)
        return self._run(input_ids, state, labels)

    def _run(self, input_ids: Tensor, state: TitansState | None, labels: Tensor | None) -> TitansOutput:
        x = self.embedding(input_ids)
        states = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else state.blocks[i])
            states.append(s)
        logits = self.head(self.norm(x))
        loss = None
        if labels is not None:
            flat = logits.flatten(0, 1)
            if flat.dtype not in (torch.float32, torch.float64):
                flat = flat.float()
            loss = F.cross_entropy(flat, labels.flatten().long(), ignore_index=IGNORE_INDEX)
        position = input_ids.shape[1] + (0 if state is None else state.position)
        new_state = TitansState(tuple(states), position, self.signature, input_ids.shape[0])
        return TitansOutput(logits=logits, state=new_state, loss=loss)

    @property
    def signature(self) -> tuple[tuple[str, Any], ...]:
        """The :func:`state_signature` of this model's config, carried by its states."""
        return self._signature

    def _check(self, input_ids: Tensor, state: TitansState | None, labels: Tensor | None) -> None:
        device = self.embedding.weight.device
        check_ids("TitansLM", "input_ids", input_ids, self.config.vocab_size, device=device)
        if labels is not None:
            check_ids("TitansLM", "labels", labels, self.config.vocab_size, device=device, ignore_index=IGNORE_INDEX)
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"TitansLM: labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}"
                )
            if not torch.compiler.is_compiling() and not bool((labels != IGNORE_INDEX).any()):
                raise ValueError(
                    f"TitansLM: every label is {IGNORE_INDEX} (ignored): the mean loss over no position is "
                    "undefined; pass labels=None for the logits alone"
                )
        if state is not None:
            self._check_state(state, input_ids.shape[0])

    def _check_state(self, state: TitansState, batch: int) -> None:
        if not isinstance(state, TitansState):
            raise TypeError(f"TitansLM: state must be a TitansState or None, got {type(state).__name__}")
        if state.signature != self.signature:
            mine = dict(self.signature)
            theirs = dict(state.signature)
            if not theirs:
                raise ValueError("TitansLM: the state carries no config signature (it was not made by a TitansLM)")
            diff = [f"{name}={theirs.get(name)!r} (model: {mine.get(name)!r})"
                    for name in sorted(set(mine) | set(theirs)) if mine.get(name) != theirs.get(name)]
            raise ValueError(f"TitansLM: the state belongs to a model of another config: {', '.join(diff)}")
        if len(state.blocks) != len(self.blocks):
            raise ValueError(f"TitansLM: the state has {len(state.blocks)} block states, the model {len(self.blocks)} blocks")
        if state.batch != batch:
            raise ValueError(f"TitansLM: the state continues {state.batch} sequences, input_ids has batch {batch}")

    @torch.no_grad()
    def generate(
        self,
        input_ids: Int[Tensor, "batch seq"],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        state: TitansState | None = None,
        generator: torch.Generator | None = None,
    ) -> GenerateOutput:
        """Samples ``max_new_tokens`` tokens after ``input_ids``, one forward of one token each.

        The prompt is consumed in one call (continuing ``state`` if given); each sampled token
        is then fed alone with the state, so time and memory per token do not grow with the
        context (except for the ``transformer`` baseline's cache).

        Args:
            input_ids: ``(batch, seq)`` prompt.
            max_new_tokens: tokens to sample (>= 0).
            temperature: softmax temperature; 0 picks the most likely token.
            top_k: sample among the ``top_k`` most likely tokens only (``None``: all).
            state: the state the prompt continues, or ``None``.
            generator: random source of the sampling.

        Returns:
            the sampled tokens ``(batch, max_new_tokens)`` and the state after all of them.

        Raises:
            TypeError: an argument of the wrong kind (see :func:`check_sampling`; ``input_ids``
                and ``state`` as in :meth:`forward`).
            ValueError: ``max_new_tokens < 0``; ``temperature`` negative, NaN or infinite;
                ``top_k < 1``; bad ``input_ids`` or ``state`` as in :meth:`forward`.
        """
        check_sampling("TitansLM.generate", max_new_tokens, temperature, top_k, generator)
        out = self(input_ids, state)
        tokens = []
        for _ in range(max_new_tokens):
            token = sample_next(out.logits[:, -1], temperature, top_k, generator)
            tokens.append(token)
            out = self._run(token[:, None], out.state, None)  # sampled ids need no validation
        new = torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros(input_ids.shape[0], 0)
        return GenerateOutput(tokens=new, state=out.state)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same; ``cuda`` (no index) means the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def sample_next(
    logits: Float[Tensor, "batch vocab"],
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """One token per row: greedy at temperature 0, else a draw from the (top-k) softmax.

    The logits are shifted by their row maximum before the division, so a tiny temperature
    gives (nearly) the greedy choice instead of an overflow."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and not _same_device(generator.device, probs.device):
        raise ValueError(f"sample_next: the generator is on {generator.device}, the logits on {probs.device}")
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_ids(
    where: str, name: str, ids: object, vocab_size: int, *, device: torch.device | None = None,
    ignore_index: int | None = None,
) -> None:
    """Refuses token ids (or labels) that are not a ``(batch >= 1, seq >= 1)`` int64/int32
    tensor with values in ``[0, vocab_size)`` (or ``ignore_index``) on ``device``.

    Raises:
        TypeError: ``ids`` is not a tensor, or its dtype is not int64/int32.
        ValueError: its shape, its values or its device.
    """
    if not isinstance(ids, Tensor):
        raise TypeError(f"{where}: {name} must be a tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in ID_DTYPES:
        raise TypeError(
            f"{where}: {name} must be an integer tensor (torch.int64 or torch.int32), got {ids.dtype}"
        )
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"{where}: {name} must be (batch >= 1, seq >= 1), got {tuple(ids.shape)}")
    if device is not None and device.type != "meta" and not _same_device(ids.device, device):
        raise ValueError(f"{where}: {name} is on {ids.device}, the model on {device}")
    if torch.compiler.is_compiling():
        # A value check reads the ids on the host (a graph break and, on a GPU, a sync): under
        # torch.compile it is skipped, and an id out of range fails inside the embedding.
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        value = int(ids[bad][0])
        allowed = f"[0, vocab_size={vocab_size})" + ("" if ignore_index is None else f" or {ignore_index}")
        raise ValueError(f"{where}: {name} must lie in {allowed}, got {value}")


def check_sampling(
    where: str, max_new_tokens: object, temperature: object, top_k: object, generator: object = None
) -> None:
    """Refuses sampling arguments outside their ranges.

    Raises:
        TypeError: ``max_new_tokens`` or ``top_k`` not an int, ``temperature`` not a number,
            ``generator`` not a ``torch.Generator``.
        ValueError: ``max_new_tokens < 0``, ``temperature`` negative, NaN or infinite,
            ``top_k < 1``.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"{where}: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"{where}: max_new_tokens must be >= 0, got {max_new_tokens}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{where}: temperature must be a finite number >= 0, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{where}: temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"{where}: top_k must be an int >= 1 or None, got {top_k!r}")
        if top_k < 1:
            raise ValueError(f"{where}: top_k must be >= 1 or None, got {top_k}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__}")


def count_parameters(config: TitansConfig) -> int:
    """Parameters of ``TitansLM(config)``, counted on the meta device (no memory allocated).

    Args:
        config: the model's configuration.

    Returns:
        The number of trainable parameters (a tied matrix counted once).
    """
    with torch.device("meta"):
        return TitansLM(config).num_parameters()
