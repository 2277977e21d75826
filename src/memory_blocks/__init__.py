"""Interchangeable, shape-annotated components for neural memories that learn at test time.

Layers (imports only go downward): ``functional`` (pure functions) < ``memories``,
``objectives``, ``optimizers``, ``gates``, ``layers``, ``attention``, ``persistent``
(components) < ``neural_memory``.
"""

from memory_blocks.attention import KVCache, SegmentAttention, SlidingWindowAttention
from memory_blocks.functional import MemoryState, memorize, memorize_naive, retrieve
from memory_blocks.gates import ConstantGate, Gate, LearnedGate
from memory_blocks.layers import CausalDepthwiseConv, RMSNorm, RotaryEmbedding, SwiGLU
from memory_blocks.memories import GatedMLPMemory, LinearMemory, MemoryModel, MLPMemory, ModuleMemory
from memory_blocks.neural_memory import NeuralMemory, NeuralMemoryState
from memory_blocks.objectives import OBJECTIVES, DotProduct, Huber, LpError, Objective, SquaredError
from memory_blocks.optimizers import OPTIMIZERS, GradientDescent, InnerOptimizer, Momentum
from memory_blocks.persistent import PersistentMemory
from memory_blocks.step_scale import STEP_SCALES, LiteralStep, NormalizedStep, StepScale

__all__ = [
    "OBJECTIVES",
    "OPTIMIZERS",
    "STEP_SCALES",
    "CausalDepthwiseConv",
    "ConstantGate",
    "DotProduct",
    "Gate",
    "GatedMLPMemory",
    "GradientDescent",
    "Huber",
    "InnerOptimizer",
    "KVCache",
    "LearnedGate",
    "LinearMemory",
    "LiteralStep",
    "LpError",
    "MLPMemory",
    "MemoryModel",
    "MemoryState",
    "ModuleMemory",
    "Momentum",
    "NeuralMemory",
    "NeuralMemoryState",
    "NormalizedStep",
    "Objective",
    "PersistentMemory",
    "RMSNorm",
    "RotaryEmbedding",
    "SegmentAttention",
    "SlidingWindowAttention",
    "SquaredError",
    "StepScale",
    "SwiGLU",
    "memorize",
    "memorize_naive",
    "retrieve",
]
