"""Llama-style building parts: normalisation, short convolution, feed-forward, rotary positions."""

from memory_blocks.layers.conv import CausalDepthwiseConv
from memory_blocks.layers.norm import RMSNorm

__all__ = ["CausalDepthwiseConv", "RMSNorm"]
