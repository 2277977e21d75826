"""The reference MAC implementation's API (``TitansMACConfig``, ``TitansMACForCausalLM``), as a
thin mapping onto :class:`~titans.config.TitansConfig` and :class:`~titans.model.TitansLM`.

Field mapping (everything else keeps the ``TitansConfig`` default)::

    TitansMACConfig                 TitansConfig
    num_tokens                  ->  vocab_size
    d_model                     ->  dim
    depth                       ->  depth
    num_heads, dim_head         ->  heads, dim_head (memory_heads = num_heads)
    segment_len                 ->  segment_len
    num_longterm_mem_tokens     ->  num_memory_tokens (N_l)
    persistent_size             ->  num_persistent
    neural_memory_segment_len   ->  chunk_size, counted in segment tokens (below; None: one
                                    segment, as the reference's default of one window)
    num_memory_layers           ->  memory_depth (layers of the memory MLP)
    neural_memory_layers        ->  memory_layers (1-based in the reference, 0-based here;
                                    None: every block)
    ff_mult                     ->  ffn_hidden = round(2 / 3 * ff_mult * d_model)
    context_window              ->  max_seq_len
    pad/bos/eos_token_id,           used by generate
    max_length

The chunk size: the reference's memory reads its interleaved stream (each segment of
``segment_len`` tokens followed by its ``num_longterm_mem_tokens`` memory tokens, one attention
window of ``segment_len + num_longterm_mem_tokens``), so its ``neural_memory_segment_len``
counts tokens of that stream; the memory here writes the segments' tokens only. A chunk of
``k`` whole windows is therefore ``k * segment_len`` here (``36 = 32 + 4`` maps to 32: one chunk
per segment, aligned with the segments as in the reference). Any other chunk is taken as it is
(exact when it divides both ``segment_len`` and ``num_longterm_mem_tokens``, e.g. 4 with 32 + 4;
otherwise the reference's chunks straddle its memory tokens, which have no counterpart here).

The variant is always ``"mac"``. Differences from the reference's forward: labels follow the
Hugging Face convention (``labels`` may equal ``input_ids``; the shift happens inside), and the
output carries the streaming ``state`` instead of a key-value cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from titans.config import TitansConfig
from titans.model import IGNORE_INDEX, TitansLM, TitansOutput, TitansState, check_ids, check_sampling, sample_next

__all__ = ["TitansMACConfig", "TitansMACForCausalLM"]


@dataclass
class TitansMACConfig:
    """The reference's MAC configuration; :meth:`to_titans_config` gives the equivalent
    :class:`TitansConfig` (built, and so validated, at construction).

    Attributes:
        num_tokens: the vocabulary size (``vocab_size``).
        d_model: the model width (``dim``).
        depth: the number of blocks.
        num_heads, dim_head: attention heads and the width of each (the memory has ``num_heads`` heads too).
        segment_len: MAC's segment length.
        num_longterm_mem_tokens: memory tokens retrieved per segment (``num_memory_tokens``, ``N_l``).
        persistent_size: persistent tokens (``num_persistent``).
        neural_memory_segment_len: the memory's chunk size in the reference's interleaved stream;
            ``None``: one window, ``segment_len + num_longterm_mem_tokens`` (mapped to
            ``chunk_size`` as the module docstring says: one segment).
        num_memory_layers: layers of the memory MLP (``memory_depth``).
        neural_memory_layers: 1-based numbers of the blocks that have a memory; ``None``: every block.
        ff_mult: the feed-forward multiplier, ``ffn_hidden = round(2 / 3 * ff_mult * d_model)``, in ``(0, 64]``.
        context_window: the longest sequence (``max_seq_len``).
        pad_token_id: the token :meth:`TitansMACForCausalLM.generate` pads finished rows with.
        bos_token_id: kept for the reference's API; unused.
        eos_token_id: the token that finishes a row in :meth:`TitansMACForCausalLM.generate`.
        max_length: the default total length (prompt included) of
            :meth:`TitansMACForCausalLM.generate`.

    Raises:
        ValueError: when the fields map to an invalid :class:`TitansConfig`, or on bad
            ``neural_memory_layers`` or ``ff_mult``.
    """

    num_tokens: int = 50257
    d_model: int = 768
    depth: int = 12
    num_heads: int = 12
    dim_head: int = 64
    segment_len: int = 64
    num_longterm_mem_tokens: int = 0
    persistent_size: int = 64
    neural_memory_segment_len: int | None = None
    num_memory_layers: int = 2
    neural_memory_layers: tuple[int, ...] | list[int] | None = None
    ff_mult: float = 4.0
    context_window: int = 2048
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    max_length: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.neural_memory_layers, list):
            self.neural_memory_layers = tuple(self.neural_memory_layers)
        self.to_titans_config()

    def to_titans_config(self) -> TitansConfig:
        """The same model as a :class:`TitansConfig` (see the module docstring's mapping)."""
        chunk = self.neural_memory_segment_len
        if chunk is None:
            chunk = self.segment_len  # the reference's default, one window, is one segment here
        elif all(isinstance(n, int) and not isinstance(n, bool)
                 for n in (chunk, self.segment_len, self.num_longterm_mem_tokens)):
            window = self.segment_len + self.num_longterm_mem_tokens  # a segment and its memory tokens
            if window > 0 and chunk > 0 and chunk % window == 0:
                chunk = chunk // window * self.segment_len  # whole windows -> their segments' tokens
        # (anything else goes to TitansConfig as it is, whose validation names a bad value)
        layers = None
        if self.neural_memory_layers is not None:
            bad = [i for i in self.neural_memory_layers
                   if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= self.depth]
            if bad:
                raise ValueError(
                    f"TitansMACConfig.neural_memory_layers: 1-based layer numbers in [1, {self.depth}], got {bad}"
                )
            layers = tuple(i - 1 for i in self.neural_memory_layers)
        if (isinstance(self.ff_mult, bool) or not isinstance(self.ff_mult, (int, float))
                or not math.isfinite(self.ff_mult) or not 0 < self.ff_mult <= 64):
            raise ValueError(f"TitansMACConfig.ff_mult: must be a finite number in (0, 64], got {self.ff_mult!r}")
        fields = dict(
            variant="mac",
            vocab_size=self.num_tokens,
            dim=self.d_model,
            depth=self.depth,
            heads=self.num_heads,
            dim_head=self.dim_head,
            memory_heads=self.num_heads,
            segment_len=self.segment_len,
            num_memory_tokens=self.num_longterm_mem_tokens,
            num_persistent=self.persistent_size,
            chunk_size=chunk,
            memory_depth=self.num_memory_layers,
            memory_layers=layers,
            ffn_hidden=max(1, round(2 * self.ff_mult * self.d_model / 3)),
            max_seq_len=self.context_window,
        )
        try:
            return TitansConfig(**fields)
        except ValueError as err:
            raise ValueError(
                f"TitansMACConfig: {err} (fields map as num_tokens->vocab_size, d_model->dim, "
                "num_heads->heads, num_longterm_mem_tokens->num_memory_tokens, persistent_size->"
                "num_persistent, neural_memory_segment_len->chunk_size, num_memory_layers->"
                "memory_depth, context_window->max_seq_len)"
            ) from err


class TitansMACForCausalLM(nn.Module):
    """The reference's MAC language model, backed by a :class:`TitansLM` (``self.model``).

    Args:
        config: the reference's configuration; the model is built from its ``to_titans_config()``.

    Raises:
        ValueError: when ``config`` is not a :class:`TitansMACConfig`.
    """

    def __init__(self, config: TitansMACConfig) -> None:
        super().__init__()
        if not isinstance(config, TitansMACConfig):
            raise ValueError(f"TitansMACForCausalLM: config must be a TitansMACConfig, got {type(config).__name__}")
        self.config = config
        self.model = TitansLM(config.to_titans_config())

    def forward(
        self,
        input_ids: Int[Tensor, "batch seq"],
        labels: Int[Tensor, "batch seq"] | None = None,
        state: TitansState | None = None,
    ) -> TitansOutput:
        """Logits ``(batch, seq, num_tokens)``; with ``labels`` (Hugging Face convention: the
        label of position ``t`` is predicted from positions ``< t``, ``-100`` ignored), the mean
        next-token loss.

        Raises:
            TypeError, ValueError: bad ``input_ids`` or ``state`` (as :meth:`TitansLM.forward`);
                ``labels`` not an integer tensor of ``input_ids``' shape with values in
                ``[0, num_tokens)`` or ``-100``, or no label left after the shift (all ``-100``).
        """
        if labels is not None:
            check_ids("TitansMACForCausalLM", "labels", labels, self.model.config.vocab_size,
                      device=self.model.embedding.weight.device, ignore_index=IGNORE_INDEX)
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"TitansMACForCausalLM: labels {tuple(labels.shape)} vs input_ids {tuple(input_ids.shape)}"
                )
            if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
                raise ValueError(
                    f"TitansMACForCausalLM: no label left to score (labels[:, 1:] are all {IGNORE_INDEX}): the mean "
                    "loss over no position is undefined; pass labels=None for the logits alone"
                )
        out = self.model(input_ids, state)
        if labels is None:
            return out
        shifted = F.pad(labels[:, 1:].long(), (0, 1), value=IGNORE_INDEX)
        logits = out.logits.flatten(0, 1)
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        loss = F.cross_entropy(logits, shifted.flatten(), ignore_index=IGNORE_INDEX)
        return TitansOutput(logits=out.logits, state=out.state, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Int[Tensor, "batch seq"],
        max_new_tokens: int | None = None,
        *,
        max_length: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Int[Tensor, "batch total"]:
        """Hugging Face-style generation: returns the prompt followed by the new tokens.

        Generates ``max_new_tokens`` (or up to ``max_length`` tokens in all; default
        ``config.max_length``), streaming with the model's state. A row that produced
        ``eos_token_id`` (default ``config.eos_token_id``) is padded with ``pad_token_id``
        afterwards; generation stops when every row has finished.

        Raises:
            TypeError, ValueError: sampling arguments out of range (see
                :func:`~titans.model.check_sampling`), ``max_length`` not an int, an
                ``eos_token_id`` / ``pad_token_id`` outside ``[0, num_tokens)``, bad ``input_ids``.
        """
        where = "TitansMACForCausalLM.generate"
        check_ids(where, "input_ids", input_ids, self.model.config.vocab_size)
        if max_new_tokens is None:
            total = self.config.max_length if max_length is None else max_length
            if isinstance(total, bool) or not isinstance(total, int):
                raise TypeError(f"{where}: max_length must be an int, got {total!r}")
            max_new_tokens = max(0, total - input_ids.shape[1])
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.config.pad_token_id if pad_token_id is None else pad_token_id
        pad = eos if pad is None else pad
        check_sampling(where, max_new_tokens, temperature, top_k, generator)
        for name, value in (("eos_token_id", eos), ("pad_token_id", pad)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value < self.model.config.vocab_size):
                vocab = self.model.config.vocab_size
                raise ValueError(f"{where}: {name} must be a token id in [0, {vocab}), got {value!r}")
        out = self.model(input_ids)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        tokens = [input_ids]
        for step in range(max_new_tokens):
            token = sample_next(out.logits[:, -1], temperature, top_k, generator)
            if eos is not None:
                token = torch.where(done, torch.full_like(token, pad), token)
                done = done | (token == eos)
            tokens.append(token[:, None])
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            out = self.model(token[:, None], out.state)
        return torch.cat(tokens, dim=1)
