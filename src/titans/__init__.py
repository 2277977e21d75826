"""Titans assemblers (MAC, MAG, MAL, LMM) built from ``memory_blocks`` components.

- :class:`TitansConfig` names a variant and every swappable component; presets give sizes.
- The blocks (:class:`MACBlock`, :class:`MAGBlock`, :class:`MALBlock`, :class:`LMMBlock`,
  :class:`AttentionBlock`) receive their components as constructor arguments; the builders in
  :mod:`titans.builders` wire them from a config, by names looked up in :mod:`titans.registry`.
- :class:`TitansLM` streams exactly: pieces of any size with the returned state equal one call.
- :func:`save_pretrained` / :func:`load_pretrained`: safetensors weights plus JSON config.
- :class:`TitansMACConfig` / :class:`TitansMACForCausalLM`: the reference MAC API, mapped.
"""

from titans import registry
from titans.blocks import (
    AttentionBlock,
    AttentionState,
    Block,
    LMMBlock,
    LMMState,
    MACBlock,
    MACState,
    MAGBlock,
    MAGState,
    MALBlock,
    MALState,
)
from titans.builders import build_block, build_combine, build_memory
from titans.checkpoint import load_pretrained, save_pretrained
from titans.compat import TitansMACConfig, TitansMACForCausalLM
from titans.config import PRESETS, TitansConfig
from titans.gating import CombineGate, NormalizedGate, ProductGate, SigmoidGate
from titans.model import GenerateOutput, TitansLM, TitansOutput, TitansState, count_parameters

__all__ = [
    "PRESETS",
    "AttentionBlock",
    "AttentionState",
    "Block",
    "CombineGate",
    "GenerateOutput",
    "LMMBlock",
    "LMMState",
    "MACBlock",
    "MACState",
    "MAGBlock",
    "MAGState",
    "MALBlock",
    "MALState",
    "NormalizedGate",
    "ProductGate",
    "SigmoidGate",
    "TitansConfig",
    "TitansLM",
    "TitansMACConfig",
    "TitansMACForCausalLM",
    "TitansOutput",
    "TitansState",
    "build_block",
    "build_combine",
    "build_memory",
    "count_parameters",
    "load_pretrained",
    "registry",
    "save_pretrained",
]
