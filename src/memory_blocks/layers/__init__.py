"""Llama-style building parts: normalisation, short convolution, feed-forward, rotary positions."""

from memory_blocks.layers.conv import CausalDepthwiseConv
from memory_blocks.layers.feedforward import SwiGLU
from memory_blocks.layers.norm import RMSNorm
from memory_blocks.layers.rotary import RotaryEmbedding

__all__ = ["CausalDepthwiseConv", "RMSNorm", "RotaryEmbedding", "SwiGLU"]
