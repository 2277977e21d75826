"""``transformers`` models of Titans: :class:`TitansForCausalLM` wraps a :class:`TitansLM`; the
streaming :class:`TitansState` is the generation cache (see :mod:`titans.hf`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from jaxtyping import Int
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from titans.hf.configuration import TitansHFConfig, TitansMACConfig
from titans.model import IGNORE_INDEX, TitansLM, TitansState

__all__ = ["TitansCausalLMOutput", "TitansForCausalLM", "TitansMACForCausalLM", "TitansPreTrainedModel"]

#: transformers 5 names tied weights ``{target: source}``; 4 lists the targets.
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


@dataclass
class TitansCausalLMOutput(ModelOutput):
    """``loss`` (with labels: mean next-token cross-entropy), ``logits`` ``(batch, seq, vocab)``,
    ``state``: the streaming state after the input (the generation cache; ``None`` when
    ``use_cache=False``)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    state: TitansState | None = None


class TitansPreTrainedModel(PreTrainedModel):
    """Shared ``transformers`` plumbing. Weights are initialised by the Titans modules
    themselves when built (gates, identity maps, ...), so ``_init_weights`` leaves them as they
    are, and :meth:`from_pretrained` refuses a checkpoint that lacks any of them."""

    config_class = TitansHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _is_stateful = True

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: every Titans module initialises its own parameters when built."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """The cache is the model's own :class:`TitansState`, not a ``transformers`` Cache."""
        return False

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, refusing a checkpoint with missing weights.

        Raises:
            ValueError: the checkpoint lacks weights of the model (they would stay
                uninitialised); the message names them.
        """
        wants_info = bool(kwargs.pop("output_loading_info", False))
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            raise ValueError(f"{cls.__name__}.from_pretrained: the checkpoint lacks the weights {missing}")
        return (model, info) if wants_info else model


class TitansForCausalLM(TitansPreTrainedModel, GenerationMixin):
    """A :class:`TitansLM` (``self.model``) as a ``transformers`` causal language model.

    ``forward(input_ids, state=..., labels=...)`` returns :class:`TitansCausalLMOutput`;
    ``generate()`` streams with the state (greedy or sampling). See the module docstring for
    the cache and the label convention.
    """

    if _TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"model.head.weight": "model.embedding.weight"}
    else:  # pragma: no cover - exercised with transformers 4.x only
        _tied_weights_keys = ["model.head.weight"]

    def __init__(self, config: object):
        if not isinstance(config, TitansHFConfig):
            raise TypeError(f"{type(self).__name__}: config must be a TitansHFConfig, got {type(config).__name__}")
        super().__init__(config)
        self.model = TitansLM(config.to_titans_config())
        self.post_init()

    @classmethod
    def from_titans(cls, model: object, **config_kwargs: Any) -> TitansForCausalLM:
        """Wraps an existing :class:`TitansLM` (its parameters shared, not copied), e.g. one
        loaded with :func:`titans.load_pretrained`.

        Args:
            model: the model to wrap.
            **config_kwargs: further :class:`TitansHFConfig` arguments (``eos_token_id``, ...).

        Raises:
            TypeError: ``model`` is not a TitansLM.
        """
        if not isinstance(model, TitansLM):
            raise TypeError(f"{cls.__name__}.from_titans: model must be a TitansLM, got {type(model).__name__}")
        with torch.device("meta"):
            wrapper = cls(TitansHFConfig(model.config, **config_kwargs))
        wrapper.model = model
        return wrapper

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embedding

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.head

    def forward(
        self,
        input_ids: Int[Tensor, "batch seq"],
        attention_mask: Tensor | None = None,
        state: TitansState | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
    ) -> TitansCausalLMOutput | tuple[Any, ...]:
        """Logits for every position of ``input_ids``, continuing from ``state``.

        Args:
            input_ids: ``(batch, seq)`` int64/int32 token ids (the tokens ``state`` has not
                consumed yet).
            attention_mask: accepted for tokenizer outputs and ``generate()``; it may be longer
                than ``input_ids`` (the whole sequence) but must be all ones: padding is not
                supported (every token is written into the memory).
            state: where an earlier call left these sequences (:class:`TitansState`), or
                ``None``.
            labels: ``(batch, seq)`` targets in the Hugging Face convention (``labels`` may equal
                ``input_ids``; position ``t`` is scored on ``labels[:, t + 1]``), ``-100``
                ignored.
            use_cache: return the state after the input (default ``config.use_cache``).
            return_dict: a :class:`TitansCausalLMOutput` (default) or the tuple of its non-None
                fields.

        Raises:
            TypeError: ``input_ids``/``labels`` not integer tensors, ``state`` not a
                TitansState (as :meth:`TitansLM.forward`).
            ValueError: ``attention_mask`` with a zero or of a shape that does not cover
                ``input_ids``; ``labels`` of another shape, out of ``[0, vocab_size)`` (other
                than ``-100``), or with no target left after the shift; bad ``input_ids`` or
                ``state`` (as :meth:`TitansLM.forward`).
        """
        where = type(self).__name__
        if attention_mask is not None:
            _check_attention_mask(where, attention_mask, input_ids)
        shifted = None if labels is None else _shift_labels(where, labels, input_ids, self.config.vocab_size)
        out = self.model(input_ids, state, shifted)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output = TitansCausalLMOutput(loss=out.loss, logits=out.logits, state=out.state if use_cache else None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        state: TitansState | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The inputs of one generation step: with a state, only the tokens it has not consumed
        (``input_ids[:, state.position:]``, one token after the prompt); without one (the first
        step, or ``use_cache=False``), the whole sequence."""
        if state is not None:
            input_ids = input_ids[:, state.position:]
        return {"input_ids": input_ids, "state": state, "attention_mask": attention_mask, "use_cache": use_cache}

    def _update_model_kwargs_for_generation(
        self, outputs: ModelOutput, model_kwargs: dict[str, Any], is_encoder_decoder: bool = False,
        num_new_tokens: int = 1,
    ) -> dict[str, Any]:
        model_kwargs["state"] = outputs.get("state")
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``GenerationMixin.generate`` with greedy search or sampling.

        Raises:
            ValueError: ``num_beams > 1`` (beam search needs a reorderable cache), or a
                ``state`` passed in (``generate()`` manages the state; continue a stream with
                :meth:`forward` or ``self.model.generate``).
        """
        where = f"{type(self).__name__}.generate"
        if kwargs.get("state") is not None:
            raise ValueError(
                f"{where}: state is managed by generate; continue a stream with forward(input_ids, state=...) "
                "or self.model.generate(..., state=...)"
            )
        kwargs.pop("state", None)
        generation_config = kwargs.get("generation_config") or self.generation_config
        num_beams = kwargs.get("num_beams", getattr(generation_config, "num_beams", 1))
        if num_beams is not None and num_beams != 1:
            raise ValueError(
                f"{where}: num_beams must be 1 (greedy search or sampling), got {num_beams}: beam search "
                "reorders the cache, and the Titans state cannot be reordered"
            )
        return super().generate(*args, **kwargs)


class TitansMACForCausalLM(TitansForCausalLM):
    """The reference MAC language model as a ``transformers`` model (config
    :class:`TitansMACConfig`); everything else as :class:`TitansForCausalLM`."""

    config_class = TitansMACConfig

    def __init__(self, config: object):
        if not isinstance(config, TitansMACConfig):
            raise TypeError(f"TitansMACForCausalLM: config must be a TitansMACConfig, got {type(config).__name__}")
        super().__init__(config)
        if config.generation_max_length is not None:
            self.generation_config.max_length = config.generation_max_length

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`TitansForCausalLM.generate`; a config's ``max_length`` counts the prompt, as the
        reference's does (passed on explicitly: transformers 5.0 counted it as new tokens)."""
        lengths = ("generation_config", "max_length", "max_new_tokens")
        if self.config.generation_max_length is not None and all(kwargs.get(k) is None for k in lengths):
            kwargs["max_length"] = self.generation_config.max_length
        return super().generate(*args, **kwargs)


def _check_attention_mask(where: str, mask: Tensor, input_ids: Tensor) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{where}: attention_mask must be a tensor or None, got {type(mask).__name__}")
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
        return  # TitansLM names the bad input_ids
    if mask.ndim != 2 or mask.shape[0] != input_ids.shape[0] or mask.shape[1] < input_ids.shape[1]:
        raise ValueError(
            f"{where}: attention_mask must be (batch, >= seq) for input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    if not bool((mask == 1).all()):
        raise ValueError(
            f"{where}: attention_mask holds zeros: padding is not supported (every token is written into "
            "the memory); pass sequences of equal length without padding"
        )


def _shift_labels(where: str, labels: object, input_ids: Tensor, vocab_size: int) -> Tensor:
    """Hugging Face labels (aligned with ``input_ids``) as TitansLM's (already shifted)."""
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
        kind = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"{where}: labels must be an int64/int32 tensor, got {kind}")
    if not isinstance(input_ids, Tensor) or labels.shape != input_ids.shape:
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else None
        raise ValueError(f"{where}: labels have shape {tuple(labels.shape)}, input_ids {shape}")
    bad = ((labels < 0) | (labels >= vocab_size)) & (labels != IGNORE_INDEX)
    if bool(bad.any()):
        raise ValueError(
            f"{where}: labels must lie in [0, vocab_size={vocab_size}) or {IGNORE_INDEX}, got {int(labels[bad][0])}"
        )
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if not bool((shifted != IGNORE_INDEX).any()):
        raise ValueError(
            f"{where}: no label is left after the shift (position t is scored on labels[:, t + 1]; "
            f"labels of shape {tuple(labels.shape)} with every later label {IGNORE_INDEX}): pass labels=None "
            "for the logits alone"
        )
    return shifted
