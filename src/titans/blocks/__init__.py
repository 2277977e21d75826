"""Titans blocks: each a pre-norm residual mixer plus a SwiGLU feed-forward, built by injection."""

from titans.blocks.attention_only import AttentionBlock, AttentionState
from titans.blocks.common import Block
from titans.blocks.lmm import LMMBlock, LMMState
from titans.blocks.mac import MACBlock, MACState
from titans.blocks.mag import MAGBlock, MAGState
from titans.blocks.mal import MALBlock, MALState

__all__ = [
    "AttentionBlock",
    "AttentionState",
    "Block",
    "LMMBlock",
    "LMMState",
    "MACBlock",
    "MACState",
    "MAGBlock",
    "MAGState",
    "MALBlock",
    "MALState",
]
