"""Builders: the one place where a :class:`TitansConfig` is turned into wired components.

Each variant has a builder ``(config, layer) -> block`` registered in
:data:`titans.registry.VARIANTS`; a block builder creates the components (memory, attention,
persistent memory, norms, feed-forward, gate) and injects them into the block class. To
compose a variant of your own, build the components yourself and pass them to a block, or
register a new builder.
"""

from __future__ import annotations

from torch import nn

from memory_blocks.attention import SegmentAttention, SlidingWindowAttention
from memory_blocks.gates import ConstantGate, Gate
from memory_blocks.layers.feedforward import SwiGLU
from memory_blocks.layers.norm import RMSNorm
from memory_blocks.neural_memory import NeuralMemory
from memory_blocks.persistent import PersistentMemory

from titans import registry
from titans.blocks import AttentionBlock, LMMBlock, MACBlock, MAGBlock, MALBlock
from titans.blocks.mac import MemoryTokenGain
from titans.config import TitansConfig

__all__ = [
    "build_block",
    "build_combine",
    "build_memory",
    "build_persistent",
    "build_sliding_window_attention",
]


def build_memory(config: TitansConfig) -> NeuralMemory:
    """The neural memory of one block: memory model, objective, optimizer, gates (eqs. 11-16).

    Args:
        config: the model's configuration; its ``memory_*``, objective, optimizer and gate fields are used.

    Returns:
        The :class:`~memory_blocks.NeuralMemory` of width ``config.dim``.

    Raises:
        ValueError: when a component name in ``config`` is not registered.
    """
    heads = config.resolved_memory_heads
    dim_head = config.dim // heads
    memory_model = registry.MEMORY_MODELS.get(config.memory_model, "TitansConfig.memory_model")(
        dim_head,
        depth=config.memory_depth,
        expansion=float(config.memory_expansion),
        activation=config.memory_activation,
    )
    objective = registry.OBJECTIVES.get(config.objective, "TitansConfig.objective")(**config.objective_kwargs)
    optimizer = registry.OPTIMIZERS.get(config.optimizer, "TitansConfig.optimizer")()

    def gate(value: str | float | None) -> Gate | str | None:
        # Names from the registry pass through ("learned"); numbers become constant gates.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return ConstantGate(float(value), heads)
        return value

    momentum_gate = gate(config.momentum_gate) if optimizer.uses_momentum else "learned"
    return NeuralMemory(
        config.dim,
        heads,
        config.chunk_size,
        memory_model,
        objective=objective,
        optimizer=optimizer,
        lr_gate=gate(config.lr_gate),
        lr_init=config.lr_gate_init,
        lr_max=config.lr_gate_max,
        momentum_gate=momentum_gate,
        decay_gate=gate(config.decay_gate),
        decay_init=config.decay_gate_init,
        decay_max=config.resolved_decay_gate_max,
        per_tensor_lr=config.per_tensor_lr,
        conv_kernel=config.conv_kernel or None,
        block_chunks=config.memory_block_chunks,
        checkpoint=config.memory_checkpoint,
        step_scale=registry.STEP_SCALES.get(config.step_scale, "TitansConfig.step_scale")(),
        forget_target=config.forget_target,
        retention=registry.RETENTIONS.get(config.retention, "TitansConfig.retention")(
            **config.retention_kwargs, per_chunk=config.retention_readout == "chunk"
        ),
        feature_map=registry.FEATURE_MAPS.get(config.feature_map, "TitansConfig.feature_map")(
            **config.feature_map_kwargs
        ),
        omega_window=config.omega_window,
    )


def build_sliding_window_attention(config: TitansConfig, *, window: int | None = None) -> SlidingWindowAttention:
    """Sliding-window attention whose prefix is the persistent tokens."""
    return SlidingWindowAttention(
        config.dim,
        config.heads,
        window=config.window if window is None else window,
        dim_head=config.resolved_dim_head,
        num_prefix=config.num_persistent,
        rotary_base=config.rotary_base,
        backend=config.attention_backend,
    )


def build_persistent(config: TitansConfig) -> PersistentMemory | None:
    return PersistentMemory(config.num_persistent, config.dim) if config.num_persistent else None


def build_combine(config: TitansConfig) -> nn.Module:
    """The module that merges attention and memory outputs for ``config.variant`` (MAC's
    ``y * M(y)``, eq. 25; MAG's normalised gate, eq. 28), chosen by ``config.combine``.

    Args:
        config: the model's configuration.

    Returns:
        The combine gate, of width ``config.dim``.

    Raises:
        ValueError: when the variant has no default combine gate and ``config.combine`` names none,
            or the name is not registered.
    """
    name = config.resolved_combine
    if name is None:
        raise ValueError(f"TitansConfig.combine: variant {config.variant!r} has no default combine gate")
    return registry.COMBINES.get(name, "TitansConfig.combine")(config.dim, eps=config.norm_eps)


def _norm(config: TitansConfig) -> RMSNorm:
    return RMSNorm(config.dim, eps=config.norm_eps)


def _ffn(config: TitansConfig) -> dict[str, nn.Module]:
    return dict(feedforward=SwiGLU(config.dim, config.ffn_hidden), ffn_norm=_norm(config))


def _mac_memory_norm(config: TitansConfig) -> nn.Module | None:
    """MAC's memory-token scaling (``config.mac_memory_norm``): ``None`` (``"none"``), a learned
    per-feature gain from 1 (``"gain"``), or an RMSNorm whose gain starts at 1 (``"rms"``) or at 0
    (``"rms_zero"``: the attention starts without the tokens' content and learns to open it)."""
    if config.mac_memory_norm == "none":
        return None
    if config.mac_memory_norm == "gain":
        return MemoryTokenGain(config.dim)
    norm = _norm(config)
    if config.mac_memory_norm == "rms_zero":
        nn.init.zeros_(norm.weight)
    return norm


def build_mac_block(config: TitansConfig, layer: int) -> MACBlock:
    with_memory = config.layer_has_memory(layer)
    tokens = config.resolved_memory_tokens if with_memory else 0
    attention = SegmentAttention(
        config.dim,
        config.heads,
        segment=config.segment_len,
        dim_head=config.resolved_dim_head,
        memory_per_segment=max(tokens, 1),
        memory_visibility=config.mac_memory_visibility,
        memory_positions=config.mac_memory_positions,
        rotary_base=config.rotary_base,
    )
    retrieve_projection = None
    if tokens and config.mac_retrieve_query == "separate":
        retrieve_projection = nn.Linear(config.dim, config.dim, bias=False)
        nn.init.eye_(retrieve_projection.weight)
    return MACBlock(
        attention=attention,
        memory=build_memory(config) if with_memory else None,
        persistent=build_persistent(config),
        combine=build_combine(config) if with_memory else None,
        norm=_norm(config),
        num_memory_tokens=tokens,
        write=config.mac_write,
        retrieve_projection=retrieve_projection,
        memory_norm=_mac_memory_norm(config) if tokens else None,
        **_ffn(config),
    )


def build_attention_block(config: TitansConfig, layer: int, *, window: int | None = None) -> AttentionBlock:
    return AttentionBlock(
        attention=build_sliding_window_attention(config, window=window),
        persistent=build_persistent(config),
        norm=_norm(config),
        **_ffn(config),
    )


def build_mag_block(config: TitansConfig, layer: int) -> nn.Module:
    if not config.layer_has_memory(layer):
        return build_attention_block(config, layer)
    return MAGBlock(
        attention=build_sliding_window_attention(config),
        memory=build_memory(config),
        persistent=build_persistent(config),
        combine=build_combine(config),
        norm=_norm(config),
        **_ffn(config),
    )


def build_mal_block(config: TitansConfig, layer: int) -> nn.Module:
    if not config.layer_has_memory(layer):
        return build_attention_block(config, layer)
    return MALBlock(
        memory=build_memory(config),
        attention=build_sliding_window_attention(config),
        persistent=build_persistent(config),
        norm=_norm(config),
        attention_norm=_norm(config),
        **_ffn(config),
    )


def build_lmm_block(config: TitansConfig, layer: int) -> nn.Module:
    if not config.layer_has_memory(layer):
        return build_attention_block(config, layer)
    return LMMBlock(memory=build_memory(config), persistent=build_persistent(config), norm=_norm(config), **_ffn(config))


def build_swa_block(config: TitansConfig, layer: int) -> AttentionBlock:
    return build_attention_block(config, layer)


def build_transformer_block(config: TitansConfig, layer: int) -> AttentionBlock:
    """Full causal attention: a window that covers ``max_seq_len`` tokens and the prefix."""
    return build_attention_block(config, layer, window=config.max_seq_len)


def build_block(config: TitansConfig, layer: int) -> nn.Module:
    """Block ``layer`` of the model ``config`` describes.

    Args:
        config: the model's configuration; ``config.variant`` picks the block builder.
        layer: the block's index, ``0 <= layer < config.depth``.

    Returns:
        The block (a module mapping ``(batch, seq, dim)`` and a state to the same).

    Raises:
        ValueError: when ``layer`` is out of range or the variant is not registered.
    """
    if not 0 <= layer < config.depth:
        raise ValueError(f"build_block: layer must be in [0, {config.depth}), got {layer}")
    return registry.VARIANTS.get(config.variant, "TitansConfig.variant")(config, layer)


for _name, _builder in (
    ("mac", build_mac_block),
    ("mag", build_mag_block),
    ("mal", build_mal_block),
    ("lmm", build_lmm_block),
    ("swa", build_swa_block),
    ("transformer", build_transformer_block),
):
    registry.VARIANTS.register(_name, _builder, replace=True)
