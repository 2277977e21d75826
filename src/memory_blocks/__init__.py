"""Interchangeable, shape-annotated components for neural memories that learn at test time.

Layers (imports only go downward): ``functional`` (pure functions) < ``memories``,
``objectives``, ``optimizers``, ``gates``, ``layers``, ``attention``, ``persistent``,
``retention``, ``feature_maps`` (components) < ``neural_memory``.
"""

from memory_blocks.attention import KVCache, SegmentAttention, SlidingWindowAttention
from memory_blocks.feature_maps import FEATURE_MAPS, FeatureMap, IdentityFeatures, PolynomialFeatures
from memory_blocks.functional import MemoryState, memorize, memorize_naive, retrieve
from memory_blocks.gates import ConstantGate, Gate, LearnedGate
from memory_blocks.layers import CausalDepthwiseConv, RMSNorm, RotaryEmbedding, SwiGLU
from memory_blocks.memories import GatedMLPMemory, LinearMemory, MemoryModel, MLPMemory, ModuleMemory
from memory_blocks.neural_memory import NeuralMemory, NeuralMemoryState
from memory_blocks.objectives import OBJECTIVES, DotProduct, Huber, LpError, Objective, SquaredError
from memory_blocks.optimizers import OPTIMIZERS, GradientDescent, InnerOptimizer, Momentum, Muon
from memory_blocks.persistent import PersistentMemory
from memory_blocks.retention import RETENTIONS, ElasticNet, KLRetention, L2Decay, LqNormalization, Retention
from memory_blocks.step_scale import STEP_SCALES, LiteralStep, NormalizedStep, StepScale

__all__ = [
    "FEATURE_MAPS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "RETENTIONS",
    "STEP_SCALES",
    "CausalDepthwiseConv",
    "ConstantGate",
    "DotProduct",
    "ElasticNet",
    "FeatureMap",
    "Gate",
    "GatedMLPMemory",
    "GradientDescent",
    "Huber",
    "IdentityFeatures",
    "InnerOptimizer",
    "KLRetention",
    "KVCache",
    "L2Decay",
    "LearnedGate",
    "LinearMemory",
    "LiteralStep",
    "LpError",
    "LqNormalization",
    "MLPMemory",
    "MemoryModel",
    "MemoryState",
    "ModuleMemory",
    "Momentum",
    "Muon",
    "NeuralMemory",
    "NeuralMemoryState",
    "NormalizedStep",
    "Objective",
    "PersistentMemory",
    "PolynomialFeatures",
    "RMSNorm",
    "Retention",
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
