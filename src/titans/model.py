"""``TitansLM``: embedding, Titans blocks, final norm, output head; streaming forward and generate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from memory_blocks.layers.norm import RMSNorm

from titans.builders import build_block
from titans.config import TitansConfig

__all__ = ["GenerateOutput", "TitansLM", "TitansOutput", "TitansState", "count_parameters"]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TitansState:
    """Everything a :class:`TitansLM` needs to continue a batch of sequences.

    Attributes:
        blocks: one state per block (memory states, KV caches, MAC's unfinished segment).
        position: tokens consumed so far.
    """

    blocks: tuple[Any, ...]
    position: int

    def detach(self) -> TitansState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return TitansState(tuple(s.detach() for s in self.blocks), self.position)


@dataclass(frozen=True)
class TitansOutput:
    """``logits`` ``(batch, seq, vocab)``; ``loss`` (mean cross-entropy over labelled positions,
    when labels were given); ``state`` to pass with the next piece of the sequences."""

    logits: Float[Tensor, "batch seq vocab"]
    state: TitansState
    loss: Float[Tensor, ""] | None = None


@dataclass(frozen=True)
class GenerateOutput:
    """``tokens`` ``(batch, new)``: the sampled tokens; ``state``: after the prompt and all of them."""

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
    """

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        if not isinstance(config, TitansConfig):
            raise ValueError(f"TitansLM: config must be a TitansConfig, got {type(config).__name__}")
        self.config = config
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
            loss = F.cross_entropy(flat, labels.flatten(), ignore_index=IGNORE_INDEX)
        position = input_ids.shape[1] + (0 if state is None else state.position)
        return TitansOutput(logits=logits, state=TitansState(tuple(states), position), loss=loss)

    def _check(self, input_ids: Tensor, state: TitansState | None, labels: Tensor | None) -> None:
        if input_ids.ndim != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"TitansLM: input_ids must be (batch, seq >= 1), got {tuple(input_ids.shape)}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"TitansLM: input_ids must lie in [0, vocab_size={self.config.vocab_size})")
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"TitansLM: labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}"
            )
        if state is not None and len(state.blocks) != len(self.blocks):
            raise ValueError(f"TitansLM: the state has {len(state.blocks)} block states, the model {len(self.blocks)} blocks")

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
        """
        if max_new_tokens < 0:
            raise ValueError(f"TitansLM.generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"TitansLM.generate: temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"TitansLM.generate: top_k must be >= 1 or None, got {top_k}")
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
    """One token per row: greedy at temperature 0, else a draw from the (top-k) softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and not _same_device(generator.device, probs.device):
        raise ValueError(f"sample_next: the generator is on {generator.device}, the logits on {probs.device}")
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def count_parameters(config: TitansConfig) -> int:
    """Parameters of ``TitansLM(config)``, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        return TitansLM(config).num_parameters()
