"""``transformers`` configs of Titans models: :class:`TitansHFConfig` (a TitansConfig as its dict)
and :class:`TitansMACConfig` (the reference MAC API's fields)."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from titans import compat
from titans.config import CONFIG_VERSION, TitansConfig, ceiling_as_written, check_config_version

__all__ = ["TitansHFConfig", "TitansMACConfig"]

#: Attributes a :class:`TitansHFConfig` derives from its TitansConfig (for transformers' own
#: utilities); when given (a saved ``config.json`` holds them) they must agree.
_DERIVED = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "heads",
    "tie_word_embeddings": "tie_embeddings",
}


def _titans_config(where: str, titans: object, version: object = CONFIG_VERSION) -> TitansConfig:
    """``titans`` (a TitansConfig, its dict, or ``None`` for the default) as a TitansConfig; a dict
    written at an earlier config ``version`` keeps the defaults of its time
    (:func:`~titans.config.ceiling_as_written`)."""
    check_config_version(f"{where}: titans_version", version)
    if titans is None:
        return TitansConfig()
    if isinstance(titans, TitansConfig):
        return titans
    if isinstance(titans, dict):
        try:
            return TitansConfig.from_dict(ceiling_as_written(titans, version))
        except TypeError as err:
            raise ValueError(f"{where}: titans holds a value of the wrong kind ({err})") from err
    raise TypeError(
        f"{where}: titans must be a TitansConfig, a dict of its fields or None, got {type(titans).__name__}"
    )


class TitansHFConfig(PretrainedConfig):
    """A ``transformers`` config holding a :class:`TitansConfig` (``model_type="titans"``).

    ``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` and
    ``tie_word_embeddings`` mirror the TitansConfig for ``transformers``' utilities; the
    TitansConfig stays the single source of truth (:meth:`to_titans_config`).

    Args:
        titans: the model's :class:`TitansConfig`, its :meth:`~TitansConfig.to_dict`, or
            ``None`` for ``TitansConfig()``.
        use_cache: whether the forward returns the streaming state by default (generation).
        **kwargs: the usual ``PretrainedConfig`` arguments (``bos_token_id``, ``eos_token_id``,
            ``pad_token_id``, ...). The mirrored attributes may be given (a saved
            ``config.json`` holds them) but must agree with ``titans``.

    Raises:
        TypeError: ``titans`` is of another kind.
        ValueError: ``titans`` holds an unknown field or a refused value, or a mirrored
            attribute disagrees with it (the message names it).
    """

    model_type = "titans"

    def __init__(self, titans: object = None, use_cache: bool = True, **kwargs: Any):
        config = _titans_config(type(self).__name__, titans, kwargs.pop("titans_version", CONFIG_VERSION))
        self._init_from(config, use_cache, kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> TitansHFConfig:
        """A saved config (``from_pretrained``): one written before ``titans_version`` existed is
        of version 1 (:data:`titans.config.CONFIG_VERSION`)."""
        if "titans" in config_dict:
            config_dict = {"titans_version": 1, **config_dict}
        return super().from_dict(config_dict, **kwargs)

    def _init_from(self, config: TitansConfig, use_cache: object, kwargs: dict[str, Any]) -> None:
        where = type(self).__name__
        if not isinstance(use_cache, bool):
            raise TypeError(f"{where}: use_cache must be a bool, got {use_cache!r}")
        for name, field in _DERIVED.items():
            given = kwargs.pop(name, getattr(config, field))
            if given != getattr(config, field):
                raise ValueError(
                    f"{where}: {name}={given!r} disagrees with titans.{field}={getattr(config, field)!r} "
                    "(set it in the TitansConfig)"
                )
        super().__init__(tie_word_embeddings=config.tie_embeddings, **kwargs)
        self.titans = config.to_dict()
        self.titans_version = CONFIG_VERSION  # what ``titans``' None fields mean (its defaults' version)
        self.use_cache = use_cache
        self.vocab_size = config.vocab_size
        self.hidden_size = config.dim
        self.num_hidden_layers = config.depth
        self.num_attention_heads = config.heads

    def to_titans_config(self) -> TitansConfig:
        """The :class:`TitansConfig` of the model (validated again)."""
        return TitansConfig.from_dict(dict(self.titans))


class TitansMACConfig(TitansHFConfig):
    """The reference MAC configuration as a ``transformers`` config (``model_type="titans_mac"``).

    The fields and their mapping onto :class:`TitansConfig` are those of
    :class:`titans.compat.TitansMACConfig` (``num_tokens -> vocab_size``, ``d_model -> dim``,
    ...); the derived TitansConfig is kept under ``titans`` like :class:`TitansHFConfig`'s.
    ``pad_token_id``, ``bos_token_id``, ``eos_token_id`` are the usual config attributes;
    ``max_length`` (a generation setting, which ``transformers`` 5 keeps out of model configs) is
    kept as ``generation_max_length`` and becomes the model's ``generation_config.max_length``.

    Raises:
        ValueError: a field the mapping refuses (the message gives the mapping), or a saved
            ``titans`` that is not the one the fields give.
    """

    model_type = "titans_mac"

    def __init__(
        self,
        num_tokens: int = 50257,
        d_model: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        dim_head: int = 64,
        segment_len: int = 64,
        num_longterm_mem_tokens: int = 0,
        persistent_size: int = 64,
        neural_memory_segment_len: int | None = None,
        num_memory_layers: int = 2,
        neural_memory_layers: tuple[int, ...] | list[int] | None = None,
        ff_mult: float = 4.0,
        context_window: int = 2048,
        max_length: int | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ):
        reference = compat.TitansMACConfig(
            num_tokens=num_tokens, d_model=d_model, depth=depth, num_heads=num_heads, dim_head=dim_head,
            segment_len=segment_len, num_longterm_mem_tokens=num_longterm_mem_tokens,
            persistent_size=persistent_size, neural_memory_segment_len=neural_memory_segment_len,
            num_memory_layers=num_memory_layers, neural_memory_layers=neural_memory_layers, ff_mult=ff_mult,
            context_window=context_window,
        )
        config = reference.to_titans_config()
        saved = kwargs.pop("titans", None)
        version = kwargs.pop("titans_version", CONFIG_VERSION)
        if saved is not None and (saved_config := _titans_config("TitansMACConfig", saved, version)) != config:
            # Saved before compat counted the chunk in segment tokens (the reference's number
            # was taken as it is): the model was trained with that chunk, which it keeps.
            legacy = (segment_len + num_longterm_mem_tokens if neural_memory_segment_len is None
                      else neural_memory_segment_len)
            if saved_config.chunk_size != legacy or saved_config != dataclasses.replace(
                config, chunk_size=saved_config.chunk_size
            ):
                raise ValueError("TitansMACConfig: the saved titans config is not the one the reference fields map to")
            config = saved_config
        if max_length is None:
            max_length = kwargs.pop("generation_max_length", None)
        bad_length = isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        if max_length is not None and bad_length:
            raise ValueError(f"TitansMACConfig: max_length must be an int >= 1 or None, got {max_length!r}")
        self._init_from(config, use_cache, kwargs)
        self.generation_max_length = max_length
        self.num_tokens = num_tokens
        self.d_model = d_model
        self.depth = depth
        self.num_heads = num_heads
        self.dim_head = dim_head
        self.segment_len = segment_len
        self.num_longterm_mem_tokens = num_longterm_mem_tokens
        self.persistent_size = persistent_size
        self.neural_memory_segment_len = neural_memory_segment_len
        self.num_memory_layers = num_memory_layers
        self.neural_memory_layers = None if neural_memory_layers is None else list(neural_memory_layers)
        self.ff_mult = ff_mult
        self.context_window = context_window
