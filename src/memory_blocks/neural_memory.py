"""``NeuralMemory``: the long-term memory layer (paper section 3), composed of injected parts."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from memory_blocks.feature_maps import FEATURE_MAPS, FeatureMap, IdentityFeatures
from memory_blocks.functional.memorize_op.chunk import memorize
from memory_blocks.functional.retrieve import retrieve
from memory_blocks.functional.state import MemoryState
from memory_blocks.gates import ConstantGate, Gate, LearnedGate, decay_range
from memory_blocks.layers.conv import CausalDepthwiseConv
from memory_blocks.layers.norm import RMSNorm
from memory_blocks.memories.base import MemoryModel
from memory_blocks.memories.mlp import MLPMemory
from memory_blocks.objectives import OBJECTIVES, Objective, SquaredError
from memory_blocks.functional.validate import (
    as_float,
    check_forget_target,
    check_integer,
    check_layer_input,
    check_tensor,
)
from memory_blocks.optimizers import OPTIMIZERS, InnerOptimizer
from memory_blocks.retention import RETENTIONS, Retention
from memory_blocks.step_scale import STEP_SCALES, StepScale

__all__ = ["NeuralMemory", "NeuralMemoryState"]

_LEARNED = "learned"


@dataclass(frozen=True)
class NeuralMemoryState:
    """The state of a :class:`NeuralMemory` between calls.

    Attributes:
        memory: the fast weights and momentum (:class:`MemoryState`).
        conv: the last ``conv_kernel - 1`` projected tokens ``(batch, conv_kernel - 1,
            3 * heads * dim_head)``, or ``None`` without convolution.
    """

    memory: MemoryState
    conv: Tensor | None

    def detach(self) -> NeuralMemoryState:
        return NeuralMemoryState(self.memory.detach(), None if self.conv is None else self.conv.detach())


def _unchanged(value: Any) -> Any:
    return value


def _to_float32(value: Any) -> Any:
    """A tensor (or a dict of tensors, or ``None``) in float32; float64 and integers unchanged."""
    if isinstance(value, dict):
        return {name: _to_float32(t) for name, t in value.items()}
    if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.float()
    return value


def _inner_precision(x: Tensor) -> tuple[contextlib.AbstractContextManager[Any], Callable[[Any], Any]]:
    """The memory's inner loop in full precision under autocast: ``(context, cast)``.

    Under ``torch.autocast`` the projections and gates come out in the low-precision dtype
    (bfloat16 or float16) while normalised keys and the fast weights (``W_0`` is a float32
    parameter) stay in float32, and the inner products, their closed-form gate products and the
    fast weights themselves would be rounded to 8 bits of mantissa. Inside ``context`` autocast
    is off and ``cast`` turns a tensor (or a dict of tensors, or ``None``) into float32; without
    autocast, the context does nothing and ``cast`` returns its argument unchanged. (A plain
    pair rather than a generator context manager, so ``torch.compile`` traces it without a
    graph break.)"""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext(), _unchanged
    return torch.autocast(device_type, enabled=False), _to_float32


def _check_gate_value(what: str, value: float) -> None:
    """A constant gate's range: ``theta`` finite and >= 0; ``eta``, ``alpha`` in ``[0, 1]``."""
    if what == "lr_gate":
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"NeuralMemory: lr_gate must be finite and >= 0, got {value}")
    elif not 0 <= value <= 1:
        raise ValueError(f"NeuralMemory: {what} must lie in [0, 1], got {value}")


def _component(what: str, value: Any, names: dict[str, Any], kind: str, accepts: Callable[[Any], bool]) -> Any:
    """``value`` if it is a component ``accepts`` takes, else the one registered under the name
    ``value`` (built with no argument); a clear error otherwise."""
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"NeuralMemory: unknown {what} {value!r}; choose one of {sorted(names)}")
        value = names[value]()
    if not accepts(value):
        raise TypeError(f"NeuralMemory: {what} must be {kind} or one of {sorted(names)}, got {type(value).__name__}")
    return value



def _learned_only(fn: str, what: str, gate: object, init: float | None, max_value: float | None) -> None:
    """``{prefix}_init`` / ``{prefix}_max`` shape the learned gate ``what`` only: refused with another."""
    if gate != _LEARNED and (init is not None or max_value is not None):
        prefix = what.removesuffix("_gate")
        raise ValueError(
            f"{fn}: {prefix}_init and {prefix}_max apply to {what}='learned' only, got {what}={gate!r}"
        )

class NeuralMemory(nn.Module):
    """A multi-head neural memory that learns at test time, with its projections and gates.

    Data flow for tokens ``x`` ``(batch, seq, dim)`` (paper eqs. 11-16 and section 4.4)::

        x --W_qkv--> conv (causal, depthwise) --SiLU--> q, k, v per head
        q, k --l2 normalise-->
        theta(x), eta(x), alpha(x)  (gates, per head and token)
        q, k --feature map (identity by default; then l2 normalised again)-->
        theta' = step_scale(theta, eta)             # normalised step (default; "literal": eq. 13)
        y = memorize(memory, q, k, v, theta', eta, alpha, forget_target,
                     retention, omega_window, gamma(x) / c, Muon's steps)
                                                    # write k->v, read q (eqs. 12-16)
        y --RMSNorm--> * sigmoid(W_g x) --W_o--> out

    Args:
        dim: model width.
        heads: memory heads; each head has its own fast weights, all starting at the memory
            model's ``W_0``.
        chunk_size: tokens whose gradients share the chunk-start weights (eq. 16).
        memory: the memory model ``f(W; x)``, with ``dim_in == dim_out == dim_head``; default
            ``MLPMemory(dim_head, depth=2, expansion=4)``.
        dim_head: features per head; default ``dim // heads``.
        objective: the inner loss; default :class:`SquaredError` (eq. 12); or its name in
            :data:`~memory_blocks.objectives.OBJECTIVES` (``"squared_error"``, ``"huber"``,
            ``"lp"``, ``"dot_product"``, each with its default settings).
        optimizer: :class:`Momentum` (default, eq. 13), :class:`GradientDescent` or
            :class:`Muon` (orthogonalised momentum, written once per chunk), or their names
            ``"momentum"`` / ``"gd"`` / ``"muon"``.
        retention: a :class:`Retention` or its name in
            :data:`~memory_blocks.retention.RETENTIONS`: ``"l2"`` (default, :class:`L2Decay`, the
            paper's forgetting), ``"lq"``, ``"kl"``, ``"elastic_net"``. Its linear decay is the
            ``decay_gate`` towards ``forget_target``; a nonlinear readout sends the layer down
            the general path of :func:`memorize` (docs/components/retention.md).
        feature_map: a :class:`FeatureMap` on queries and keys, its name in
            :data:`~memory_blocks.feature_maps.FEATURE_MAPS` (``"identity"``, ``"polynomial"``),
            or ``None`` (identity).
        omega_window: ``c``, the tokens in each token's inner loss (ATLAS' Omega rule; 1, the
            default, is the paper's rule exactly). With ``c > 1`` a learned gate ``gamma``
            (init 0.9) weighs each token, divided by ``c`` (a weighted mean over the window).
        lr_gate: ``theta``: a :class:`Gate`, a float (constant), or ``"learned"`` (default:
            ``LearnedGate(init=lr_init, max_value=lr_max)``), in the units of ``step_scale``.
        lr_init, lr_max: the learned ``theta``'s value at initialisation and its ceiling
            (``0 < lr_init < lr_max``; default: the step scale's own, 0.3 and 1 for
            :class:`NormalizedStep`, 0.01 and 0.1 for :class:`LiteralStep`);
            ``lr_gate="learned"`` only (refused with another gate).
        step_scale: how ``theta`` becomes the step of eq. 13: :class:`NormalizedStep`
            (default: ``theta (1 - eta) / (C lambda_0)``, stable for every memory model and
            chunk size at ``theta <= 1``) or :class:`LiteralStep` (the paper's eq. 13), or their
            names ``"normalized"`` / ``"literal"``.
        forget_target: where the forgetting ``alpha`` pulls the fast weights: ``"init"``
            (default: towards ``W_0``, which keeps a LayerNorm memory out of its explosive
            region) or ``"zero"`` (eq. 14 as written). docs/guides/stability.md has the
            measurements behind both defaults.
        momentum_gate: ``eta``: as above (default learned, init 0.9); must be left at its
            default with gradient descent. A constant must lie in ``[0, 1]``, a learned
            gate's ``max_value`` must be at most 1.
        decay_gate: ``alpha``: as above (default learned, init 0.01), or ``None`` for no
            forgetting; the same range as ``eta``. (A constant ``lr_gate`` must be finite and
            ``>= 0``; its stable range depends on the step scale, docs/guides/stability.md.)
        decay_init, decay_max: the learned ``alpha``'s value at initialisation and its ceiling
            (``0 < decay_init < decay_max <= 1``; default: a ceiling of 1 and a start at
            ``min(0.01, decay_max / 10)``); ``decay_gate="learned"`` only. With ``alpha <= a`` a
            write keeps at least ``(1 - a)^n`` of itself after ``n`` tokens.
        per_tensor_lr: with the default learned ``lr_gate``, give each fast-weight tensor its
            own learning rate.
        conv_kernel: taps of the causal depthwise convolution after the projections; 0 or
            ``None`` disables it.
        qkv_silu: SiLU after the projections (and convolution).
        qk_norm: l2-normalise queries and keys.
        output_norm: RMSNorm on each head's retrieval.
        output_gate: multiply the retrieval by ``sigmoid(W_g x)`` before the output projection.
        block_chunks, checkpoint: speed and memory knobs of :func:`memorize` (results do not
            depend on them). The defaults (blocks of 6 chunks, every block keeps what its
            backward pass needs) give about 3,000 tokens/s forward + backward at 1K tokens
            and 1.25 GB peak (process) at 4K tokens for dim 256, one head, a 2-layer MLP
            memory and batch 2 on 2 CPU threads, on the hand-written path of MLP memories with
            the squared error; ``checkpoint=True`` recomputes three blocks in four in the
            backward pass (slower; it saves about a third of the memory on the general path
            of other memories, little on the hand-written one; docs/memory.md).
        compile_blocks: run the hand-written block through ``torch.compile`` (``True``: the
            default compiler, Triton kernels on a GPU; or a backend's name): compiled once per
            block shape, whatever the sequence length (:func:`memorize`; docs/guides/gpu.md).

    Raises:
        ValueError: at construction, on a size that is not an integer of the allowed range,
            an unknown component name, or a gate value outside its range; in ``forward``,
            ``retrieve`` and ``project``, on an input of the wrong shape, an empty batch or
            sequence, an input whose dtype differs from the layer's parameters (outside
            ``torch.autocast``, which the layer follows: its inner loop then runs in float32),
            or a state made for another batch, head count, chunk size, convolution or memory
            model.
        TypeError: on an argument of the wrong kind (a flag that is not a bool, an objective
            that is not callable, a state that is not a :class:`NeuralMemoryState`).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        chunk_size: int = 16,
        memory: MemoryModel | None = None,
        *,
        dim_head: int | None = None,
        objective: Objective | str | None = None,
        optimizer: InnerOptimizer | str = "momentum",
        lr_gate: Gate | float | str = _LEARNED,
        lr_init: float | None = None,
        lr_max: float | None = None,
        momentum_gate: Gate | float | str | None = _LEARNED,
        decay_gate: Gate | float | str | None = _LEARNED,
        decay_init: float | None = None,
        decay_max: float | None = None,
        per_tensor_lr: bool = False,
        conv_kernel: int | None = 4,
        qkv_silu: bool = True,
        qk_norm: bool = True,
        output_norm: bool = True,
        output_gate: bool = True,
        block_chunks: int = 6,
        checkpoint: bool = False,
        compile_blocks: bool | str = False,
        step_scale: StepScale | str = "normalized",
        forget_target: str = "init",
        retention: Retention | str = "l2",
        feature_map: FeatureMap | str | None = None,
        omega_window: int = 1,
    ) -> None:
        super().__init__()
        fn = "NeuralMemory"
        check_integer(fn, "dim", dim, 1)
        check_integer(fn, "heads", heads, 1)
        check_integer(fn, "chunk_size", chunk_size, 1)
        check_integer(fn, "block_chunks", block_chunks, 1)
        check_integer(fn, "omega_window", omega_window, 1)
        if conv_kernel is not None:
            check_integer(fn, "conv_kernel", conv_kernel, 0)
        for flag, value in (
            ("per_tensor_lr", per_tensor_lr), ("qkv_silu", qkv_silu), ("qk_norm", qk_norm),
            ("output_norm", output_norm), ("output_gate", output_gate), ("checkpoint", checkpoint),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{fn}: {flag} must be True or False, got {value!r}")
        if dim_head is None:
            if dim % heads:
                raise ValueError(
                    f"NeuralMemory: heads={heads} does not divide dim={dim}; pass dim_head explicitly"
                )
            dim_head = dim // heads
        check_integer(fn, "dim_head", dim_head, 1)
        if memory is None:
            memory = MLPMemory(dim_head, depth=2, expansion=4.0)
        if not isinstance(memory, MemoryModel):
            raise ValueError(
                f"NeuralMemory: memory must be a MemoryModel (wrap a plain nn.Module in "
                f"ModuleMemory), got {type(memory).__name__}"
            )
        if memory.dim_in != dim_head or memory.dim_out != dim_head:
            raise ValueError(
                f"NeuralMemory: the memory model maps {memory.dim_in} -> {memory.dim_out} features "
                f"but each head has dim_head={dim_head}; build it with dim {dim_head}"
            )
        optimizer = _component("optimizer", optimizer, OPTIMIZERS, "an InnerOptimizer",
                               lambda o: isinstance(o, InnerOptimizer))
        if objective is not None:
            objective = _component("objective", objective, OBJECTIVES,
                                   "an Objective (a callable (pred, target) -> loss)", callable)
        if not optimizer.uses_momentum and momentum_gate not in (_LEARNED, None):
            raise ValueError(
                "NeuralMemory: momentum_gate was given but the optimizer "
                f"{type(optimizer).__name__} uses no momentum"
            )
        step_scale = _component("step_scale", step_scale, STEP_SCALES, "a StepScale",
                                lambda o: isinstance(o, StepScale))
        check_forget_target("NeuralMemory", forget_target)
        retention = _component("retention", retention, RETENTIONS, "a Retention", lambda o: isinstance(o, Retention))
        feature_map = _component("feature_map", "identity" if feature_map is None else feature_map, FEATURE_MAPS,
                                 "a FeatureMap", lambda o: isinstance(o, FeatureMap))
        _learned_only(fn, "lr_gate", lr_gate, lr_init, lr_max)
        lr_init = step_scale.lr_init if lr_init is None else lr_init
        lr_max = step_scale.lr_max if lr_max is None else lr_max

        self.dim, self.heads, self.dim_head, self.chunk_size = dim, heads, dim_head, chunk_size
        self.memory = memory
        self.objective = objective if objective is not None else SquaredError()
        self.optimizer = optimizer
        self.step_scale, self.forget_target = step_scale, forget_target
        self.retention, self.feature_map, self.omega_window = retention, feature_map, omega_window
        self.qkv_silu, self.qk_norm = qkv_silu, qk_norm
        self.block_chunks, self.checkpoint = block_chunks, checkpoint
        if not isinstance(compile_blocks, (bool, str)):
            raise TypeError(f"{fn}: compile_blocks must be True, False or a backend's name, got {compile_blocks!r}")
        self.compile_blocks = compile_blocks
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.conv = CausalDepthwiseConv(3 * inner, conv_kernel) if conv_kernel else None
        names = list(memory.initial_weights()) if per_tensor_lr else None
        self.lr_gate = self._gate("lr_gate", lr_gate, dim, init=lr_init, max_value=lr_max, names=names)
        self.momentum_gate = (
            self._gate("momentum_gate", momentum_gate, dim, init=0.9) if optimizer.uses_momentum else None
        )
        _learned_only(fn, "decay_gate", decay_gate, decay_init, decay_max)
        decay_init, decay_max = decay_range(decay_init, decay_max)
        if not 0 < decay_max <= 1:
            raise ValueError(f"NeuralMemory: decay_max must lie in (0, 1], got {decay_max}")
        self.decay_gate = self._gate("decay_gate", decay_gate, dim, init=decay_init, max_value=decay_max)
        self.omega_gate = LearnedGate(dim, heads, init=0.9) if omega_window > 1 else None
        # The built-in gates and step scales give values in range by construction; only a user's
        # own gate or step scale has its values scanned by memorize (a host sync per call).
        self._scan_gates = not (
            all(type(g) in (LearnedGate, ConstantGate) for g in (self.lr_gate, self.momentum_gate, self.decay_gate)
                if g is not None)
            and type(self.step_scale).__module__ == StepScale.__module__
        )
        self.out_norm = RMSNorm(dim_head) if output_norm else None
        self.to_gate = nn.Linear(dim, inner, bias=False) if output_gate else None
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _gate(
        self,
        what: str,
        gate: Gate | float | str | None,
        dim: int,
        *,
        init: float,
        max_value: float = 1.0,
        names: list[str] | None = None,
    ) -> Gate | None:
        if gate is None:
            if what == "lr_gate":
                raise ValueError("NeuralMemory: lr_gate cannot be None (the memory would never learn)")
            return None
        if isinstance(gate, str):
            if gate != _LEARNED:
                raise ValueError(f"NeuralMemory: {what} must be a Gate, a float, None or 'learned', got {gate!r}")
            return LearnedGate(dim, self.heads, init=init, max_value=max_value, names=names)
        if isinstance(gate, (int, float)) and not isinstance(gate, bool):
            value = as_float(gate)
            _check_gate_value(what, value)
            return ConstantGate(value, self.heads)
        if isinstance(gate, Gate):
            if gate.heads != self.heads:
                raise ValueError(f"NeuralMemory: {what} has {gate.heads} heads, expected {self.heads}")
            if isinstance(gate, ConstantGate):
                _check_gate_value(what, gate.value)
            if isinstance(gate, LearnedGate) and what != "lr_gate" and gate.max_value > 1:
                raise ValueError(
                    f"NeuralMemory: {what} must stay in [0, 1], but its LearnedGate has "
                    f"max_value={gate.max_value}"
                )
            return gate
        raise ValueError(f"NeuralMemory: {what} must be a Gate, a float, None or 'learned', got {type(gate).__name__}")

    def init_state(self, batch: int) -> NeuralMemoryState:
        """The state before any token: ``W_0``, zero momentum, an empty convolution history."""
        return NeuralMemoryState(self.memory.init_state(batch, self.heads), None)

    def project(
        self, x: Float[Tensor, "batch seq dim"], state: NeuralMemoryState | None = None
    ) -> tuple[
        Float[Tensor, "batch heads seq dim_head"],
        Float[Tensor, "batch heads seq dim_head"],
        Float[Tensor, "batch heads seq dim_head"],
    ]:
        """The queries, keys and values the layer would write and read for ``x`` (eq. 11),
        per head, after the convolution (continuing the history in ``state``), SiLU and
        normalisation."""
        self._check(x, state)
        q, k, v, _ = self._qkv(x, None if state is None else state.conv)
        return q, k, v

    def _qkv(
        self, x: Tensor, conv_state: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        h = self.to_qkv(x)
        new_conv = None
        if self.conv is not None:
            h, new_conv = self.conv(h, conv_state)
        if self.qkv_silu:
            h = F.silu(h)
        q, k, v = h.unflatten(-1, (3, self.heads, self.dim_head)).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if not isinstance(self.feature_map, IdentityFeatures):
            q, k = self.feature_map(q), self.feature_map(k)
            if self.qk_norm:
                q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v, new_conv

    def _check(self, x: Any, state: Any) -> None:
        fn = "NeuralMemory"
        check_tensor(fn, "x", x)
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"NeuralMemory: expected x of shape (batch, seq, {self.dim}), got {tuple(x.shape)}")
        for axis, what in ((0, "batch"), (1, "sequence")):
            if x.shape[axis] < 1:
                raise ValueError(f"NeuralMemory: the {what} is empty (x of shape {tuple(x.shape)})")
        check_layer_input(fn, "x", x, self.to_qkv.weight)
        if state is None:
            return
        if not isinstance(state, NeuralMemoryState):
            raise TypeError(
                f"NeuralMemory: state must be a NeuralMemoryState or None, got {type(state).__name__}"
            )
        if not isinstance(state.memory, MemoryState):
            raise TypeError(
                f"NeuralMemory: state.memory must be a MemoryState, got {type(state.memory).__name__}"
            )
        if (state.memory.batch, state.memory.heads) != (x.shape[0], self.heads):
            raise ValueError(
                f"NeuralMemory: the state is for batch {state.memory.batch} and {state.memory.heads} "
                f"heads, the input has batch {x.shape[0]} and the layer {self.heads} heads"
            )
        if state.memory.chunk_size is not None and state.memory.chunk_size != self.chunk_size:
            raise ValueError(
                f"NeuralMemory: the state was made with chunk_size = {state.memory.chunk_size}, the "
                f"layer has chunk_size = {self.chunk_size}"
            )
        conv = self.conv
        want = None if conv is None else (x.shape[0], conv.kernel_size - 1, conv.channels)
        got = state.conv if state.conv is None else (
            tuple(state.conv.shape) if isinstance(state.conv, Tensor) else type(state.conv).__name__
        )
        if got != want:
            raise ValueError(
                f"NeuralMemory: state.conv must be {want} for this layer (conv_kernel "
                f"{0 if conv is None else conv.kernel_size}), got {got}"
            )
        if state.conv is not None:
            check_layer_input(fn, "state.conv", state.conv, self.to_qkv.weight)

    def forward(
        self, x: Float[Tensor, "batch seq dim"], state: NeuralMemoryState | None = None
    ) -> tuple[Float[Tensor, "batch seq dim"], NeuralMemoryState]:
        """Writes every token into the memory and reads it back after its own write.

        Returns the output ``(batch, seq, dim)`` and the state to pass with the next piece of
        the same sequences (pieces of any length give the same result as one call).
        """
        self._check(x, state)
        q, k, v, conv = self._qkv(x, None if state is None else state.conv)
        lr = self.lr_gate(x)
        eta = None if self.momentum_gate is None else self.momentum_gate(x)
        alpha = None if self.decay_gate is None else self.decay_gate(x)
        gamma = None if self.omega_gate is None else self.omega_gate(x) / self.omega_window
        context, cast = _inner_precision(x)
        with context:
            eta = cast(eta)
            lr = self.step_scale(cast(lr), eta, chunk_size=self.chunk_size, memory=self.memory)
            y, mem = memorize(
                self.memory, cast(q), cast(k), cast(v), lr, eta, cast(alpha),
                chunk_size=self.chunk_size,
                state=None if state is None else state.memory,
                objective=self.objective,
                check_gates=self._scan_gates,  # built-in gates: in range by construction, nan = divergence
                block_chunks=self.block_chunks,
                compile_blocks=self.compile_blocks,
                checkpoint=self.checkpoint,
                forget_target=self.forget_target,
                retention=None if self.retention.linear else self.retention,
                omega_window=self.omega_window,
                omega_weights=cast(gamma),
                newton_schulz_steps=self.optimizer.newton_schulz_steps,
            )
        return self._output(x, y), NeuralMemoryState(mem, conv)

    def retrieve(
        self, x: Float[Tensor, "batch seq dim"], state: NeuralMemoryState | None = None
    ) -> Float[Tensor, "batch seq dim"]:
        """Reads the memory as it stands in ``state`` with queries from ``x``, writing nothing
        (paper eq. 15; MAC reads the memory this way before a segment). The convolution
        history of the state is used but not advanced."""
        self._check(x, state)
        q, _, _, _ = self._qkv(x, None if state is None else state.conv)
        mem = state.memory if state is not None else self.memory.init_state(x.shape[0], self.heads)
        context, cast = _inner_precision(x)
        if not self.retention.linear:  # the state holds the accumulator A; the memory reads phi(A)
            read = {n: self.retention.readout(a, a.ndim - 2) for n, a in mem.weights.items()}
            mem = MemoryState(read, mem.momentum, mem.chunk_weights, mem.offset, mem.chunk_size, mem.window)
        with context:
            y = retrieve(self.memory, mem, cast(q))
        return self._output(x, y)

    def _output(self, x: Tensor, y: Tensor) -> Tensor:
        if self.out_norm is not None:
            y = self.out_norm(y)
        y = y.transpose(1, 2).flatten(2)  # (batch, seq, heads * dim_head)
        if self.to_gate is not None:
            y = y * torch.sigmoid(self.to_gate(x))
        return self.to_out(y)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, chunk_size={self.chunk_size}, "
            f"optimizer={type(self.optimizer).__name__}, objective={self.objective}, "
            f"step_scale={self.step_scale}, forget_target={self.forget_target!r}, "
            f"retention={self.retention}, omega_window={self.omega_window}"
        )
