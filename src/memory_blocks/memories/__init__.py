"""Memory models: the function families ``f(W; x)`` whose weights learn at test time."""

from memory_blocks.memories.base import MemoryModel
from memory_blocks.memories.gated_mlp import GatedMLPMemory
from memory_blocks.memories.linear import LinearMemory
from memory_blocks.memories.mlp import MLPMemory
from memory_blocks.memories.module import ModuleMemory

__all__ = ["GatedMLPMemory", "LinearMemory", "MLPMemory", "MemoryModel", "ModuleMemory"]
