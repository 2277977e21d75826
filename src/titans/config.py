"""``TitansConfig``: one frozen, validated record of every choice a Titans language model makes.

A config names its components by string (looked up in :mod:`titans.registry`), so it can be
written as JSON (:meth:`TitansConfig.to_json` / :meth:`TitansConfig.from_json`) and swapped one
field at a time in ablations (``dataclasses.replace(config, memory_model="linear")``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from memory_blocks.attention import MEMORY_POSITIONS
from memory_blocks.functional.validate import check_forget_target
from memory_blocks.gates import decay_range
from titans import registry
from titans.blocks.mac import MAC_MEMORY_NORMS, MAC_WRITES
from titans.recipes import recipe_fields

__all__ = ["PRESETS", "TitansConfig"]

#: Variants that carry a neural memory.
MEMORY_VARIANTS = ("mac", "mag", "mal", "lmm")
#: The default way each variant merges attention and memory (``combine=None``).
DEFAULT_COMBINE = {"mac": "normalized", "mag": "normalized"}
#: The default ceiling of the learned forgetting gate per variant (``decay_gate_max=None``; a
#: variant not named: 1, no ceiling), with the l2 retention (eq. 14's forgetting) only: a
#: nonlinear retention (MIRAS) holds its accumulator's scale by the forgetting alone and keeps
#: the full range. With forgetting free to rise, the memory of every variant learned to forget
#: the needle task's haystack within the training length and lost the needles further back than
#: that at 4x the length; bounded at 1e-3 it keeps them (docs/guides/mac_ablation.md: MAC in
#: round 5, MAG, MAL and LMM in round 6).
DEFAULT_DECAY_MAX = {"mac": 1e-3, "mag": 1e-3, "mal": 1e-3, "lmm": 1e-3}
#: The version of the document :meth:`TitansConfig.to_json` writes. A default that changes what
#: a field's ``None`` means raises it, so that a document written before keeps its model:
#: 1 (no ``"version"`` key): only MAC's forgetting had a ceiling; 2 (2026-12-01): every
#: variant's has (:data:`DEFAULT_DECAY_MAX`).
CONFIG_VERSION = 2
#: The first document version whose variant's ``decay_gate_max=None`` means its default ceiling.
_CEILING_SINCE = {"mac": 1, "mag": 2, "mal": 2, "lmm": 2}
_FORMAT = "titans-config"


@dataclass(frozen=True)
class TitansConfig:
    """Everything that defines a :class:`~titans.model.TitansLM`.

    The fields come in three groups: the variant and sizes, the memory (ignored by ``swa`` and
    ``transformer``), and the attention.

    Attributes:
        variant: ``"mac"``, ``"mag"``, ``"mal"``, ``"lmm"`` (paper section 4), or the baselines
            ``"swa"`` (sliding-window attention only) and ``"transformer"`` (full causal
            attention, window ``max_seq_len``).
        vocab_size, dim, depth: tokens, model width, number of blocks.
        heads: attention heads.
        dim_head: width of each attention head (``None``: ``dim // heads``).
        ffn_hidden: SwiGLU inner width (``None``: Llama's ``8 dim / 3`` rounded up to 64).
        tie_embeddings: share the embedding and output matrices.
        norm_eps: epsilon of every RMSNorm.

    Attributes:
        memory_model: a name in ``registry.MEMORY_MODELS`` (``"mlp"``, ``"linear"``,
            ``"gated_mlp"``).
        memory_depth: layers of the memory model (``L_M``).
        memory_expansion: the memory model's hidden width is ``memory_expansion * dim_head``.
        memory_activation: the memory model's activation, a name in ``registry.ACTIVATIONS``.
        memory_heads: memory heads (``None``: ``heads``); each head has ``dim / memory_heads``
            features.
        optimizer: ``"momentum"`` (eq. 13), ``"gd"`` or ``"muon"`` (ATLAS; written once per chunk).
        objective: ``"squared_error"`` (eq. 12), ``"huber"``, ``"lp"`` or ``"dot_product"``.
        objective_kwargs: keyword arguments of the objective (e.g. Huber's ``delta``).
        lr_gate, momentum_gate, decay_gate: ``theta``, ``eta``, ``alpha`` (eqs. 13-14):
            ``"learned"``, a float (constant), or ``None`` (momentum and decay only: off).
            A constant lies where the update is stable: ``theta`` in ``(0, 1]``
            (:data:`LR_GATE_LIMITS`), ``eta`` in ``[0, 1)``, ``alpha`` in ``[0, 1]``.
        lr_gate_init, lr_gate_max: the learned ``theta``'s value at initialisation and its
            ceiling (``0 < init < max <= 1``, ``init / max`` in ``[1e-6, 1 - 1e-6]``; ``None``:
            the step scale's own, 0.3 and 1 for ``"normalized"``, 0.01 and 0.1 for
            ``"literal"``); the learned lr gate only; docs/guides/stability.md.
        decay_gate_init, decay_gate_max: the learned ``alpha``'s value at initialisation and its
            ceiling (``0 < init < max <= 1``); the learned decay gate only. ``None``: the
            variant's ceiling with the l2 retention (:data:`DEFAULT_DECAY_MAX`: 1e-3 for every
            memory variant; 1 with the MIRAS retentions, whose accumulators only the
            forgetting keeps in scale) and a start at ``min(0.01, max / 10)``. A ceiling bounds
            how fast the memory can forget: with ``alpha <= a`` a write keeps at least
            ``(1 - a)^n`` of itself after ``n`` tokens (docs/guides/mac_ablation.md measures
            what it does to recall beyond the training length).
        step_scale: a name in ``registry.STEP_SCALES``: ``"normalized"`` (default,
            ``theta (1 - eta) / (C lambda_0)``, a documented deviation that keeps the update
            stable) or ``"literal"`` (eq. 13 as written).
        forget_target: ``"init"`` (default: forgetting pulls towards ``W_0``) or ``"zero"``
            (eq. 14 as written).
        retention: a name in ``registry.RETENTIONS`` (``"l2"``, default, the paper's forgetting;
            ``"lq"``, ``"kl"``, ``"elastic_net"``: MIRAS).
        retention_kwargs: keyword arguments of the retention (e.g. ``{"q": 4.0}``).
        retention_readout: where a nonlinear retention's readout ``W = phi(A)`` is applied:
            ``"token"`` (default: every token reads ``phi(A_t)``, the recurrence as written) or
            ``"chunk"`` (inside a chunk its first-order expansion at the chunk's start, exact at
            the chunk's end: MIRAS' chunk-wise form, many times faster; ``Retention.per_chunk``).
            The Memora recipe sets ``"chunk"``.
        feature_map: a name in ``registry.FEATURE_MAPS`` (``"identity"``, default, or
            ``"polynomial"``) applied to the memory's queries and keys.
        feature_map_kwargs: keyword arguments of the feature map (e.g. ``{"degree": 2}``).
        omega_window: ``c``, tokens in each token's inner loss (ATLAS' Omega rule; 1: eq. 12).
            :meth:`from_recipe` sets these fields (and the objective and optimizer) by name.
        per_tensor_lr: a learned step size per fast-weight tensor.
        chunk_size: tokens that share the chunk-start weights (eq. 16).
        conv_kernel: taps of the causal convolution after q, k, v (0: none).
        memory_layers: indices of the blocks that carry a memory (``None``: all). The others
            are attention-only: MAC keeps its segment attention, the rest use sliding-window
            attention.
        memory_checkpoint, memory_block_chunks: speed/memory knobs of the memory (no effect
            on results).

    Attributes:
        window: sliding-window size (MAG, MAL, swa), the current token included.
        segment_len: MAC segment length.
        num_persistent: ``N_p`` persistent tokens (eq. 19), every variant.
        num_memory_tokens: MAC's ``N_l`` memory tokens per segment, ``0 <= N_l <= segment_len``
            (``None``: ``segment_len``); see :class:`~titans.blocks.mac.MACBlock`.
        combine: a name in ``registry.COMBINES`` merging attention and memory (MAC and MAG;
            ``None``: ``"normalized"``, eq. 28's gate, for both; ``"product"`` is MAC's eq. 25
            read literally, see docs/guides/mac_ablation.md).
        mac_write: what MAC's memory writes and reads its output with: ``"attention"`` (the
            attention output ``y``, eqs. 23-24) or ``"input"`` (the segment's normalised
            inputs); see :class:`~titans.blocks.mac.MACBlock`.
        mac_memory_positions: rotary positions of MAC's memory tokens, ``"prefix"`` (before the
            segment) or ``"aligned"`` (memory token ``j`` at segment token ``j``'s position).
        mac_memory_visibility: which memory tokens segment token ``r`` sees: ``"causal"`` (those
            retrieved with the queries of tokens ``<= r``) or ``"own"`` (its own retrieval only).
        mac_retrieve_query: ``"shared"`` (the retrieval, eq. 21, uses the memory's own query
            projection) or ``"separate"`` (a learned ``dim x dim`` map, initialised to the
            identity, before it).
        mac_memory_norm: how MAC's memory tokens enter the attention: ``"none"`` (the default:
            as the memory returns them), ``"gain"`` (times a learned per-feature gain from 1, not
            normalised, so their magnitudes stay), ``"rms"`` (RMS-normalised with a learned gain
            from 1, as the segment's tokens are) or ``"rms_zero"`` (the same, the gain from 0);
            see :class:`~titans.blocks.mac.MACBlock` and docs/guides/mac_ablation.md.
        max_seq_len: the window of the ``transformer`` baseline (its full context).
        rotary_base: RoPE base.
        attention_backend: kernel of sliding-window attention: ``"blocked"``, ``"sdpa"``, ``"dense"``
            or ``"flex"`` (see :func:`~memory_blocks.functional.sliding_window_attention`).

    Validation: every field is checked at construction for its kind (integers are ``int``,
    flags real ``bool``, names strings, numbers finite) and range (``norm_eps`` in
    ``[1e-12, 1]``, ``memory_expansion`` in ``(0, 64]``, the gates above); nothing is cast.

    Raises:
        ValueError: a field of the wrong kind or out of range, or two fields that conflict; the
            message starts with ``TitansConfig.<field>:`` and names the allowed values.
    """

    variant: str = "mac"
    vocab_size: int = 256
    dim: int = 64
    depth: int = 2
    heads: int = 4
    dim_head: int | None = None
    ffn_hidden: int | None = None
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    # memory
    memory_model: str = "mlp"
    memory_depth: int = 2
    memory_expansion: float = 4.0
    memory_activation: str = "gelu"
    memory_heads: int | None = None
    optimizer: str = "momentum"
    objective: str = "squared_error"
    objective_kwargs: dict[str, float] = field(default_factory=dict, hash=False)
    lr_gate: str | float | None = "learned"
    momentum_gate: str | float | None = "learned"
    decay_gate: str | float | None = "learned"
    lr_gate_init: float | None = None
    lr_gate_max: float | None = None
    decay_gate_init: float | None = None
    decay_gate_max: float | None = None
    step_scale: str = "normalized"
    forget_target: str = "init"
    retention: str = "l2"
    retention_kwargs: dict[str, float] = field(default_factory=dict, hash=False)
    retention_readout: str = "token"
    feature_map: str = "identity"
    feature_map_kwargs: dict[str, int | float] = field(default_factory=dict, hash=False)
    omega_window: int = 1
    per_tensor_lr: bool = False
    chunk_size: int = 16
    conv_kernel: int = 4
    memory_layers: tuple[int, ...] | list[int] | None = None
    memory_checkpoint: bool = False
    memory_block_chunks: int = 4
    # attention
    window: int = 64
    segment_len: int = 64
    num_persistent: int = 4
    num_memory_tokens: int | None = None
    combine: str | None = None
    mac_write: str = "input"
    mac_memory_positions: str = "prefix"
    mac_memory_visibility: str = "causal"
    mac_retrieve_query: str = "shared"
    mac_memory_norm: str = "none"
    max_seq_len: int = 4096
    rotary_base: float = 10000.0
    attention_backend: str = "blocked"

    def __post_init__(self) -> None:
        if isinstance(self.memory_layers, list):
            object.__setattr__(self, "memory_layers", tuple(self.memory_layers))
        _objective_kwargs(self)
        object.__setattr__(self, "objective_kwargs", dict(self.objective_kwargs))
        for name in ("retention_kwargs", "feature_map_kwargs"):
            _kwargs(self, name)
            object.__setattr__(self, name, dict(getattr(self, name)))
        _validate(self)

    # ----- derived values -------------------------------------------------------------
    @property
    def has_memory(self) -> bool:
        """Whether the variant carries a neural memory at all."""
        return self.variant in MEMORY_VARIANTS

    @property
    def resolved_dim_head(self) -> int:
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

    @property
    def resolved_memory_heads(self) -> int:
        return self.memory_heads if self.memory_heads is not None else self.heads

    @property
    def resolved_memory_tokens(self) -> int:
        return self.segment_len if self.num_memory_tokens is None else self.num_memory_tokens

    @property
    def resolved_combine(self) -> str | None:
        return self.combine if self.combine is not None else DEFAULT_COMBINE.get(self.variant)

    @property
    def resolved_decay_gate_max(self) -> float | None:
        """The learned forgetting gate's ceiling: ``decay_gate_max``, else the variant's default
        with the l2 retention (:data:`DEFAULT_DECAY_MAX`; ``None``: no ceiling, 1); ``None`` when
        ``decay_gate`` is not ``"learned"``."""
        if self.decay_gate != "learned":
            return None
        if self.decay_gate_max is not None:
            return self.decay_gate_max
        return DEFAULT_DECAY_MAX.get(self.variant) if self.retention == "l2" else None

    def layer_has_memory(self, layer: int) -> bool:
        """Whether block ``layer`` carries a memory."""
        return self.has_memory and (self.memory_layers is None or layer in self.memory_layers)

    # ----- presets and JSON -----------------------------------------------------------
    @classmethod
    def preset(cls, name: str, *, variant: str = "mac", **overrides: Any) -> TitansConfig:
        """A named size (``"tiny"`` for tests; ``"170m"``, ``"340m"``, ``"760m"`` from the paper's
        Table 5) for ``variant``, with any field overridden."""
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"TitansConfig.preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "variant": variant, **overrides})

    @classmethod
    def from_recipe(cls, recipe: str, *, preset: str = "tiny", variant: str = "mac", **overrides: Any) -> TitansConfig:
        """A named memory recipe (``"titans"``, ``"moneta"``, ``"yaad"``, ``"memora"``,
        ``"atlas"``; :data:`titans.recipes.RECIPES`) on a size preset, any field overridden.

        Raises:
            ValueError: an unknown recipe or preset, or a field the config refuses.
        """
        return cls.preset(preset, variant=variant, **{**recipe_fields(recipe), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        out = dataclasses.asdict(self)
        if out["memory_layers"] is not None:
            out["memory_layers"] = list(out["memory_layers"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TitansConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them.

        Raises:
            ValueError: ``data`` is not a dict, names unknown fields, or holds a value a field
                refuses (the message names the field).
        """
        if not isinstance(data, dict):
            raise ValueError(f"TitansConfig.from_dict: expected a dict of fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TitansConfig.from_dict: unknown fields {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "version": CONFIG_VERSION, "config": self.to_dict()},
                          indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TitansConfig:
        """The inverse of :meth:`to_json`. A document without ``step_scale`` was written before
        the stabilising rules existed, so it gets the literal update (``step_scale="literal"``,
        ``forget_target="zero"``) that its model was trained with; one without ``mac_write``
        predates MAC's current defaults, so it gets ``mac_write="attention"`` and (a MAC with
        the default combine) ``combine="product"``; one without ``mac_memory_norm`` gets
        ``"none"`` (its MAC showed the retrievals unnormalised); a MAC one without
        ``decay_gate_max``, and a MAG, MAL or LMM one of version 1 (no ``"version"`` key) with it
        ``None`` or absent, gets 1 (its forgetting had no ceiling; :data:`CONFIG_VERSION`).

        Raises:
            TypeError: ``text`` is not a string.
            ValueError: ``text`` is not JSON, not a JSON object, not a ``titans-config``
                document, or a field's value is refused (the message names the field).
        """
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"TitansConfig.from_json: expected a JSON string, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"TitansConfig.from_json: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"TitansConfig.from_json: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != _FORMAT or "config" not in data:
            raise ValueError(f"TitansConfig.from_json: not a {_FORMAT!r} document (keys 'format' and 'config')")
        config = data["config"]
        if not isinstance(config, dict):
            raise ValueError(f"TitansConfig.from_json: 'config' must be a JSON object, got {type(config).__name__}")
        version = data.get("version", 1)
        check_config_version("TitansConfig.from_json: 'version'", version)
        if "step_scale" not in config:
            # Written before the stabilising rules existed (2026-11-30): the model it describes
            # (a checkpoint's) was trained with the paper's literal update.
            config = {**config, "step_scale": "literal", "forget_target": "zero"}
        if "mac_write" not in config:
            # Written before MAC's defaults were chosen by the ablation (docs/guides/mac_ablation.md):
            # its MAC wrote the attention output and combined with the product (eq. 25).
            config = {**config, "mac_write": "attention"}
            if config.get("variant") == "mac" and config.get("combine") is None:
                config["combine"] = "product"
        config = ceiling_as_written(config, version)
        if "mac_memory_norm" not in config:
            # Written before MAC normalised its memory tokens (docs/guides/mac_ablation.md).
            config = {**config, "mac_memory_norm": "none"}
        return cls.from_dict(config)


def check_config_version(what: str, version: object) -> None:
    """Refuses a config document ``version`` this titans cannot read (``what`` names it)."""
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CONFIG_VERSION:
        raise ValueError(f"{what} must be an integer from 1 to {CONFIG_VERSION} "
                         f"(a later version of titans wrote it?), got {version!r}")


def ceiling_as_written(config: dict[str, Any], version: int) -> dict[str, Any]:
    """``config`` (a :meth:`TitansConfig.to_dict`, written at document ``version``) with
    ``decay_gate_max`` 1 where the variant's forgetting had no ceiling when it was written (a
    learned gate with ``decay_gate_max`` absent, written before the field existed, or ``None`` in
    a version before the variant's ceiling: version 1 for MAG, MAL and LMM)."""
    learned_decay = config.get("decay_gate", "learned") == "learned"
    since = _CEILING_SINCE.get(config.get("variant"))
    if learned_decay and since is not None and config.get("decay_gate_max") is None and (
        version < since or "decay_gate_max" not in config
    ):
        return {**config, "decay_gate_max": 1.0}
    return config


#: The largest constant ``theta`` (and ``lr_gate_max``) each step scale accepts. ``normalized``:
#: ``theta`` is in units of ``1 / lambda_0`` and ``theta <= 1`` is stable for every chunk size and
#: momentum (docs/guides/stability.md, ``benchmarks/step_bound.py``). ``literal``: a step is
#: stable only while ``theta * lambda < 2``, and the flattest memory (the linear one, curvature
#: 2) allows ``theta < 1``; the deep memories need far less. A step scale registered under
#: another name gets its own ``lr_max``.
LR_GATE_LIMITS = {"normalized": 1.0, "literal": 1.0}
#: The learned ``theta`` gate starts at ``lr_gate_init / lr_gate_max`` of its ceiling, through
#: a sigmoid: the ratio must keep the initial logit representable.
_LR_RATIO = (1e-6, 1 - 1e-6)
#: ``memory_expansion`` at most this: a memory MLP wider than 64 ``dim_head`` is no longer a
#: test-time memory of tiny sizes but an allocation of minutes (and ``inf`` a crash).
MAX_MEMORY_EXPANSION = 64.0
#: ``norm_eps`` in this range: below it the epsilon vanishes in float32 (a zero vector gives
#: NaN); above it it swamps the mean square of unit-scale activations.
NORM_EPS_RANGE = (1e-12, 1.0)
#: Upper bounds of objective settings. ``lp``'s gradient grows as ``|r|^(p - 1)`` while the
#: normalised step is measured for the squared error: ``p = 6`` gave NaN logits within 256
#: tokens (tiny MLP memory), ``p <= 5`` stayed finite; 4 keeps a margin.
OBJECTIVE_LIMITS = {("lp", "p"): 4.0}
#: Fields that are speed knobs only: they never change results, so states are shared across them.
SPEED_FIELDS = ("memory_checkpoint", "memory_block_chunks", "attention_backend")
#: Fields that name a component of a registry (``titans.registry.<table>``).
_REGISTERED = {"variant": "VARIANTS", "memory_model": "MEMORY_MODELS", "memory_activation": "ACTIVATIONS",
               "optimizer": "OPTIMIZERS", "objective": "OBJECTIVES", "step_scale": "STEP_SCALES",
               "retention": "RETENTIONS", "feature_map": "FEATURE_MAPS"}
_BOOL_FIELDS = ("tie_embeddings", "per_tensor_lr", "memory_checkpoint")
_STR_FIELDS = (
    "variant", "memory_model", "memory_activation", "optimizer", "objective", "step_scale", "forget_target",
    "mac_write", "mac_memory_positions", "mac_memory_visibility", "mac_retrieve_query", "attention_backend",
    "mac_memory_norm", "retention", "retention_readout", "feature_map",
)


def _fail(name: str, message: str) -> ValueError:
    return ValueError(f"TitansConfig.{name}: {message}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(cfg: TitansConfig, name: str, low: int, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " or None" if optional else ""
        raise _fail(name, f"must be an integer >= {low}{extra}, got {value!r}")


def _real(cfg: TitansConfig, name: str, low: float, high: float, *, low_open: bool, high_open: bool,
          why: str = "") -> float:
    """A finite number (not a bool) in the interval ``low..high`` (open or closed at each end)."""
    value = getattr(cfg, name)
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if not _is_real(value) or not math.isfinite(value):
        raise _fail(name, f"must be a finite number in {interval}, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        raise _fail(name, f"must lie in {interval}{why}, got {value!r}")
    return float(value)


def _gate(cfg: TitansConfig, name: str, high: float, *, high_open: bool, low_open: bool, why: str) -> None:
    """``"learned"``, ``None`` (momentum and decay only) or a constant in the stable range."""
    value = getattr(cfg, name)
    if value is None:
        if name == "lr_gate":
            raise _fail(name, "cannot be None (the memory would never learn)")
        return
    if isinstance(value, str):
        registry.MEMORY_GATES.get(value, f"TitansConfig.{name}")
        return
    if not _is_real(value):
        allowed = "'learned' or a number" + ("" if name == "lr_gate" else " or None")
        raise _fail(name, f"must be {allowed}, got {value!r}")
    _real(cfg, name, 0.0, high, low_open=low_open, high_open=high_open, why=why)


def _decay_range(cfg: TitansConfig) -> None:
    """``decay_gate_init`` / ``decay_gate_max``: the learned decay gate's range, in ``(0, 1]``."""
    given = _learned_only(cfg, "decay_gate")
    if not given:
        return
    why = " (alpha is the share of the memory forgotten at each token)"
    for name in given:
        _real(cfg, name, 0.0, 1.0, low_open=True, high_open=False, why=why)
    init, ceiling = decay_range(cfg.decay_gate_init, cfg.resolved_decay_gate_max)
    where = "" if cfg.decay_gate_max is not None else f" ({cfg.variant}'s default)"
    _start_below_ceiling("decay_gate", init, ceiling, where)


def _learned_only(cfg: TitansConfig, gate: str) -> list[str]:
    """Which of ``{gate}_init`` / ``{gate}_max`` are set; refused unless ``gate`` is learned."""
    given = [n for n in (f"{gate}_init", f"{gate}_max") if getattr(cfg, n) is not None]
    if given and getattr(cfg, gate) != "learned":
        kind = gate.removesuffix("_gate")
        raise _fail(given[0], f"applies to the learned {kind} gate only, but {gate}={getattr(cfg, gate)!r}")
    return given


def _start_below_ceiling(gate: str, init: float, ceiling: float, where: str = "") -> None:
    """A learned gate's start ``{gate}_init`` below its ceiling ``{gate}_max``, at a share of it that
    keeps the sigmoid's initial logit representable (:data:`_LR_RATIO`)."""
    if not init < ceiling:
        raise ValueError(f"TitansConfig.{gate}_init: must be below {gate}_max={ceiling}{where}, got {init}")
    low, high = _LR_RATIO
    if not low <= init / ceiling <= high:
        raise ValueError(
            f"TitansConfig.{gate}_init: {gate}_init / {gate}_max must lie in [{low:g}, {high:g}] (the learned "
            f"gate starts at that share of its ceiling, through a sigmoid), got {init} / {ceiling}"
        )


def _objective_kwargs(cfg: TitansConfig) -> None:
    kwargs = cfg.objective_kwargs
    if not isinstance(kwargs, dict):
        raise _fail("objective_kwargs", f"must be a dict of names to numbers, got {kwargs!r}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not _is_real(value) or not math.isfinite(value):
            raise _fail("objective_kwargs", f"must map names to finite numbers, got {key!r}: {value!r}")


def _kwargs(cfg: TitansConfig, name: str) -> None:
    kwargs = getattr(cfg, name)
    if not isinstance(kwargs, dict):
        raise _fail(name, f"must be a dict of names to numbers, got {kwargs!r}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not _is_real(value) or not math.isfinite(value):
            raise _fail(name, f"must map names to finite numbers, got {key!r}: {value!r}")


def _component_kwargs(cfg: TitansConfig, name: str, table: Any) -> None:
    """The component named by field ``name`` accepts the config's ``<name>_kwargs``."""
    kwargs = getattr(cfg, f"{name}_kwargs")
    cls = table.get(getattr(cfg, name), f"TitansConfig.{name}")
    try:
        cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise _fail(f"{name}_kwargs", f"{getattr(cfg, name)!r} rejects {kwargs}: {err}") from err


def _validate_types(cfg: TitansConfig) -> None:
    """Every field's kind, before anything compares or hashes it."""
    for name in _BOOL_FIELDS:
        value = getattr(cfg, name)
        if not isinstance(value, bool):
            raise _fail(name, f"must be true or false (a bool), got {value!r}")
    for name in _STR_FIELDS:
        value = getattr(cfg, name)
        if not isinstance(value, str):
            table = _REGISTERED.get(name)
            if table is not None:  # an object given for a named component: say how to name it
                getattr(registry, table).get(value, f"TitansConfig.{name}")
            raise _fail(name, f"must be a string, got {value!r}")
    if cfg.combine is not None and not isinstance(cfg.combine, str):
        raise _fail("combine", f"must be a string or None, got {cfg.combine!r}")
    _objective_kwargs(cfg)
    for name in ("retention_kwargs", "feature_map_kwargs"):
        _kwargs(cfg, name)
    layers = cfg.memory_layers
    if layers is not None and not isinstance(layers, tuple):
        raise _fail("memory_layers", f"must be a list of block indices or None, got {layers!r}")


def _validate(cfg: TitansConfig) -> None:
    _validate_types(cfg)
    registry.VARIANTS.get(cfg.variant, "TitansConfig.variant")
    for name, low in (("vocab_size", 1), ("dim", 1), ("depth", 1), ("heads", 1), ("window", 1),
                      ("segment_len", 1), ("num_persistent", 0), ("chunk_size", 1),
                      ("conv_kernel", 0), ("memory_depth", 1), ("max_seq_len", 1),
                      ("memory_block_chunks", 1), ("omega_window", 1)):
        _int(cfg, name, low)
    for name in ("dim_head", "ffn_hidden", "memory_heads"):
        _int(cfg, name, 1, optional=True)
    _int(cfg, "num_memory_tokens", 0, optional=True)
    if cfg.dim_head is None and cfg.dim % cfg.heads:
        raise ValueError(f"TitansConfig.heads: {cfg.heads} does not divide dim={cfg.dim} (or give dim_head)")
    if cfg.resolved_dim_head % 2:
        raise ValueError(f"TitansConfig.dim_head: rotary positions need an even dim_head, got {cfg.resolved_dim_head}")
    if cfg.dim % cfg.resolved_memory_heads:
        raise ValueError(f"TitansConfig.memory_heads: {cfg.resolved_memory_heads} does not divide dim={cfg.dim}")
    if cfg.resolved_memory_tokens > cfg.segment_len:
        raise ValueError(
            f"TitansConfig.num_memory_tokens: {cfg.num_memory_tokens} exceeds segment_len={cfg.segment_len} "
            "(memory token m is aligned with segment token m)"
        )
    _real(cfg, "memory_expansion", 0.0, MAX_MEMORY_EXPANSION, low_open=True, high_open=False)
    _real(cfg, "norm_eps", *NORM_EPS_RANGE, low_open=False, high_open=False)
    value = cfg.rotary_base
    if not _is_real(value) or not math.isfinite(value) or not value > 1:
        raise _fail("rotary_base", f"must be a finite number > 1, got {value!r}")
    registry.MEMORY_MODELS.get(cfg.memory_model, "TitansConfig.memory_model")
    registry.ACTIVATIONS.get(cfg.memory_activation, "TitansConfig.memory_activation")
    optimizer = registry.OPTIMIZERS.get(cfg.optimizer, "TitansConfig.optimizer")
    objective = registry.OBJECTIVES.get(cfg.objective, "TitansConfig.objective")
    for key, value in cfg.objective_kwargs.items():
        limit = OBJECTIVE_LIMITS.get((cfg.objective, key))
        if limit is not None and value > limit:
            raise ValueError(
                f"TitansConfig.objective_kwargs: {cfg.objective!r}'s {key} must be at most {limit:g} (a larger one "
                f"makes the memory's update diverge), got {value!r}"
            )
    try:
        objective(**cfg.objective_kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"TitansConfig.objective_kwargs: {cfg.objective!r} rejects {cfg.objective_kwargs}: {err}") from err
    _component_kwargs(cfg, "retention", registry.RETENTIONS)
    _component_kwargs(cfg, "feature_map", registry.FEATURE_MAPS)
    step_scale = registry.STEP_SCALES.get(cfg.step_scale, "TitansConfig.step_scale")
    check_forget_target("TitansConfig", cfg.forget_target)
    lr_limit = LR_GATE_LIMITS.get(cfg.step_scale, step_scale.lr_max)
    why = f" (the largest stable step of step_scale={cfg.step_scale!r}, docs/guides/stability.md)"
    _gate(cfg, "lr_gate", lr_limit, low_open=True, high_open=False, why=why)
    for name in _learned_only(cfg, "lr_gate"):
        _real(cfg, name, 0.0, lr_limit, low_open=True, high_open=False, why=why)
    lr_init = step_scale.lr_init if cfg.lr_gate_init is None else cfg.lr_gate_init
    lr_max = step_scale.lr_max if cfg.lr_gate_max is None else cfg.lr_gate_max
    _start_below_ceiling("lr_gate", lr_init, lr_max)
    _gate(cfg, "momentum_gate", 1.0, low_open=False, high_open=True,
          why=" (eta = 1 would add up gradients forever: the surprise grows without bound)")
    _gate(cfg, "decay_gate", 1.0, low_open=False, high_open=False,
          why=" (alpha is the share of the memory forgotten at each token)")
    _decay_range(cfg)
    if not optimizer.uses_momentum and cfg.momentum_gate not in ("learned", None):
        raise ValueError(f"TitansConfig.momentum_gate: the optimizer {cfg.optimizer!r} uses no momentum")
    if cfg.combine is not None:
        registry.COMBINES.get(cfg.combine, "TitansConfig.combine")
    # MAC's queries never see the retrievals of later tokens: no "all" visibility.
    for name, choices in (("mac_write", MAC_WRITES), ("mac_memory_positions", MEMORY_POSITIONS),
                          ("mac_memory_visibility", ("causal", "own")), ("mac_retrieve_query", ("shared", "separate")),
                          ("mac_memory_norm", MAC_MEMORY_NORMS), ("retention_readout", ("token", "chunk"))):
        if getattr(cfg, name) not in choices:
            raise ValueError(f"TitansConfig.{name}: must be one of {choices}, got {getattr(cfg, name)!r}")
    if cfg.attention_backend not in ("blocked", "sdpa", "dense", "flex"):
        raise ValueError(
            f"TitansConfig.attention_backend: must be 'blocked', 'sdpa', 'dense' or 'flex', got {cfg.attention_backend!r}"
        )
    if cfg.memory_layers is not None:
        bad = [i for i in cfg.memory_layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < cfg.depth]
        if bad or len(set(cfg.memory_layers)) != len(cfg.memory_layers):
            raise ValueError(
                f"TitansConfig.memory_layers: must be distinct block indices in [0, {cfg.depth}), got {cfg.memory_layers}"
            )


#: Named sizes. The paper's (camera-ready Table 5): blocks / width / heads; training length 4K,
#: window 2K, MAC segments of 512 with 256 memory tokens, 128 persistent tokens, chunk 16,
#: a 2-layer memory MLP (expansion 4); vocabulary 32000 (the Llama 2 tokenizer).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=64, dim=32, depth=2, heads=2, ffn_hidden=64, memory_expansion=2.0,
        chunk_size=4, window=8, segment_len=8, num_persistent=2, num_memory_tokens=None,
        max_seq_len=256,
    ),
    **{
        name: dict(
            vocab_size=32000, dim=dim, depth=depth, heads=heads, chunk_size=16, window=2048,
            segment_len=512, num_persistent=128, num_memory_tokens=256, max_seq_len=4096,
        )
        for name, depth, dim, heads in (("170m", 12, 768, 16), ("340m", 24, 1024, 16), ("760m", 24, 1536, 16))
    },
}
