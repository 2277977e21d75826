"""Hugging Face ``transformers`` adapter (the optional ``hf`` extra).

- :class:`TitansHFConfig`: a ``PretrainedConfig`` holding a :class:`~titans.config.TitansConfig`
  (as its dict, under ``titans``), ``model_type="titans"``.
- :class:`TitansForCausalLM`: a ``PreTrainedModel`` + ``GenerationMixin`` wrapping a
  :class:`~titans.model.TitansLM` (``self.model``), every variant.
- :class:`TitansMACConfig` / :class:`TitansMACForCausalLM`: the reference MAC API's field names
  (mapped by :class:`titans.compat.TitansMACConfig`) as real ``transformers`` classes,
  ``model_type="titans_mac"``.

Importing this module registers both model types with ``AutoConfig`` and
``AutoModelForCausalLM``. ``import titans`` never imports ``transformers``; this module does,
and tells how to install it when it is missing.

Generation cache: the streaming :class:`~titans.model.TitansState` is the cache. The forward
returns it as ``state`` and takes it back as ``state``; ``generate()`` carries it from step to
step and feeds only the tokens the state has not consumed (one after the prompt), so a step's
cost does not grow with the context. With ``use_cache=False`` every step re-runs the whole
prefix without a state. Beam search needs a cache that can be reordered; the state cannot be,
so only greedy search and sampling are offered (``num_beams > 1`` is refused).

Labels follow the Hugging Face convention: ``labels`` may equal ``input_ids``; the shift
happens inside (position ``t`` is scored on ``labels[:, t + 1]``), ``-100`` is ignored.
:class:`~titans.model.TitansLM` takes labels already shifted; the loss is the same number.
"""

from __future__ import annotations

try:
    from transformers import AutoConfig, AutoModelForCausalLM
except ImportError as err:  # pragma: no cover - the test suite installs the extra
    raise ImportError(
        'titans.hf needs the Hugging Face transformers library: pip install "titans-memory-blocks[hf]"'
    ) from err

from titans.hf.configuration import TitansHFConfig, TitansMACConfig
from titans.hf.modeling import TitansCausalLMOutput, TitansForCausalLM, TitansMACForCausalLM, TitansPreTrainedModel

__all__ = [
    "TitansCausalLMOutput", "TitansForCausalLM", "TitansHFConfig", "TitansMACConfig", "TitansMACForCausalLM",
    "TitansPreTrainedModel",
]

AutoConfig.register(TitansHFConfig.model_type, TitansHFConfig, exist_ok=True)
AutoConfig.register(TitansMACConfig.model_type, TitansMACConfig, exist_ok=True)
AutoModelForCausalLM.register(TitansHFConfig, TitansForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(TitansMACConfig, TitansMACForCausalLM, exist_ok=True)
