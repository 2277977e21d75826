"""The ground truth: the memory's recurrence, token by token, exactly as written in the paper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from torch.func import jvp

from memory_blocks.functional.losses import squared_error
from memory_blocks.functional.memorize_op.design_args import check_design_args, start_window
from memory_blocks.functional.memorize_op.newton_schulz import orthogonal_step
from memory_blocks.functional.state import MemoryState
from memory_blocks.functional.validate import check_forget_target, check_memorize_args

__all__ = ["memorize_naive", "token_gradients"]


def token_gradients(
    memory: Any,
    objective: Callable[[Tensor, Tensor], Tensor],
    weights: dict[str, Tensor],
    k: Float[Tensor, "batch heads seq dim_in"],
    v: Float[Tensor, "batch heads seq dim_out"],
    create_graph: bool,
) -> dict[str, Tensor]:
    """``grad_W sum_t l(W; k_t, v_t)`` per (batch, head), for weights ``(batch, heads, *shape)``.

    With ``create_graph`` the result is differentiable (the outer loop trains through it).
    """
    with torch.enable_grad():
        leaves = {
            n: w if (create_graph and w.requires_grad) else w.detach().requires_grad_()
            for n, w in weights.items()
        }
        loss = objective(memory.forward_with(leaves, k), v).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
    return dict(zip(leaves, grads))


def _per_head(g: Tensor, like: Tensor) -> Tensor:
    """Broadcast a (batch, heads) scalar over a tensor of shape (batch, heads, *shape)."""
    return g.reshape(*g.shape, *([1] * (like.ndim - 2)))


def memorize_naive(
    memory: Any,
    q: Float[Tensor, "batch heads seq dim_in"],
    k: Float[Tensor, "batch heads seq dim_in"],
    v: Float[Tensor, "batch heads seq dim_out"],
    lr: Float[Tensor, "batch heads seq"] | float | dict[str, Float[Tensor, "batch heads seq"] | float],
    momentum: Float[Tensor, "batch heads seq"] | float | None = None,
    decay: Float[Tensor, "batch heads seq"] | float | None = None,
    *,
    chunk_size: int,
    state: MemoryState | None = None,
    objective: Callable[[Tensor, Tensor], Tensor] = squared_error,
    forget_target: str = "zero",
    check_gates: bool = True,
    retention: Any = None,
    omega_window: int = 1,
    omega_weights: Float[Tensor, "batch heads seq"] | float | None = None,
    newton_schulz_steps: int = 0,
) -> tuple[Float[Tensor, "batch heads seq dim_out"], MemoryState]:
    """Write ``(k_t, v_t)`` into the memory and read ``q_t``, one token at a time (the oracle).

    For each token ``t`` (``t0`` the last token before ``t``'s chunk; paper eqs. 12-16):

        g_t = grad_W l(W_{t0}; k_t, v_t)
        S_t = eta_t S_{t-1} - theta_t g_t          (momentum=None: S_t = -theta_t g_t)
        W_t = (1 - alpha_t) W_{t-1} + S_t          (decay=None: alpha_t = 0)
        y_t = f(W_t; q_t)

    With ``forget_target="init"`` the forgetting pulls towards the memory's initial weights
    ``W_0`` instead of zero: ``W_t = W_0 + (1 - alpha_t) (W_{t-1} - W_0) + S_t`` (a documented
    deviation from eq. 14 that keeps a LayerNorm memory out of its high-curvature region;
    docs/guides/stability.md).

    The design-space rules (MIRAS, ATLAS; docs/guides/design_space.md), each off by default:

        G_t = sum_{i=t-c+1..t} gamma_i grad_W l(W_{t0}; k_i, v_i)   (Omega rule; c = 1, gamma = 1: g_t)
        A_t = T + (1 - alpha_t) (A_{t-1} - T) + S_t,  W_t = phi(A_t)  (retention readout phi)
        per_chunk readout: y_t reads phi(A_{t0}) + J_phi(A_{t0})[A_t - A_{t0}] inside a chunk,
                           phi(A_t) at the chunk's last token
        Muon: A_t = T + (1 - alpha_t) (A_{t-1} - T), plus C * orth(S_t) at a chunk's last token

    where every gradient is taken with respect to ``W`` at ``W_{t0} = phi(A_{t0})``.

    Args:
        memory: a memory model (``LinearMemory``, ``MLPMemory``, ... or ``ModuleMemory``).
        q, k: ``(batch, heads, seq, dim_in)`` queries and keys.
        v: ``(batch, heads, seq, dim_out)`` values.
        lr: ``theta``, ``(batch, heads, seq)``; or a dict giving each fast weight its own.
            Every value finite and ``>= 0``. Each gate (``lr``, a value of its dict,
            ``momentum``, ``decay``) may also be a Python number: the same value for every
            (batch, head, token), in the keys' dtype.
        momentum: ``eta`` in ``[0, 1]``, ``(batch, heads, seq)``; ``None`` for plain gradient descent (the
            state's momentum then passes through unchanged).
        decay: ``alpha`` in ``[0, 1]``, ``(batch, heads, seq)``; ``None`` for no forgetting.
        chunk_size: tokens per chunk; gradients inside a chunk use the chunk-start weights.
        state: where a previous call left the memory; ``None`` starts at ``W_0``.
        objective: per-token inner loss ``(pred, target) -> loss``; squared error by default.
        forget_target: ``"zero"`` (eq. 14) or ``"init"`` (forget towards ``W_0``).
        check_gates: scan the gate tensors' values for their ranges (one reduction per gate
            and one host synchronisation per call). :class:`~memory_blocks.NeuralMemory` turns
            it off: its gates are in range by construction (sigmoid-bounded learned gates,
            constants checked when the layer is built), and a gate that became nan inside a
            diverging model is then a divergence that reaches the output (where training's
            finite checks report it), not a bad argument.
        retention: a :class:`~memory_blocks.Retention` (its ``readout`` is ``phi``); ``None`` or
            a linear one (:class:`~memory_blocks.L2Decay`): ``W = A``.
        omega_window: ``c >= 1``, the tokens in each token's inner loss (the Omega rule; the
            earlier ones are taken from ``state.window``, or have weight 0 at the start).
        omega_weights: ``gamma`` ``(batch, heads, seq)``, finite and ``>= 0``, or a number;
            ``None``: 1 for every token.
        newton_schulz_steps: ``> 0`` for Muon (needs ``momentum``): the momentum is written,
            orthogonalised, once per chunk (:class:`~memory_blocks.Muon`); 0: every token writes
            ``S_t``.

    Returns:
        ``y`` of shape ``(batch, heads, seq, dim_out)`` and the new :class:`MemoryState`
        (its subnormal entries set to zero, :meth:`MemoryState.without_subnormals`; tagged
        with ``chunk_size``, so that a call with another chunk size refuses it).

    Raises:
        ValueError: on a bad shape, an empty sequence, a gate outside its range (nan and inf
            included), a chunk size that is not an integer >= 1, tensors whose dtype differs
            from the memory model's weights (the dtype rule: no silent cast; under autocast
            :class:`~memory_blocks.NeuralMemory` casts to float32 itself), or a state that
            belongs to another memory model, batch, heads, dtype or chunk size.
        TypeError: on an argument of the wrong kind (a gate that is neither a tensor nor a
            number, a state that is not a :class:`MemoryState`).
        RuntimeError: under ``torch.inference_mode()`` (use ``torch.no_grad()``).

    Values of ``q``, ``k``, ``v`` are the caller's data and are not scanned: a nan or inf
    there passes through to ``y`` and the state.
    """
    lr_map, momentum, decay = check_memorize_args(
        "memorize_naive", memory, q, k, v, lr, momentum, decay, chunk_size, state, check_gates
    )
    check_forget_target("memorize_naive", forget_target)
    design = check_design_args(
        "memorize_naive", k, retention, omega_window, omega_weights, newton_schulz_steps, momentum,
        state, check_gates,
    )
    target = memory.initial_weights() if forget_target == "init" else None
    batch, heads, seq, _ = k.shape
    c = design.window
    hist_k, hist_v, hist_w = start_window(state, k, v, c)
    gamma = design.weight if design.weight is not None else k.new_ones(batch, heads, seq)
    k_ext, v_ext = torch.cat([hist_k, k], dim=2), torch.cat([hist_v, v], dim=2)
    w_ext = torch.cat([hist_w, gamma], dim=2)
    plain = c == 1 and design.weight is None
    if state is None:
        state = memory.init_state(batch, heads)

    def readout(acc: dict[str, Tensor]) -> dict[str, Tensor]:
        if design.retention is None:
            return acc
        return {n: design.retention.readout(a, a.ndim - 2) for n, a in acc.items()}

    def read_weights(acc: dict[str, Tensor], start: dict[str, Tensor], chunk_end: bool) -> dict[str, Tensor]:
        """What token t reads: ``phi(A_t)``, or inside a chunk with a per-chunk readout the
        first-order expansion at the chunk's start (forward-mode autograd of ``phi``)."""
        r = design.retention
        if r is None or not r.per_chunk or chunk_end:
            return readout(acc)
        out = {}
        for n, a in acc.items():
            at_start, change = jvp(lambda z, d=a.ndim - 2: r.readout(z, d), (start[n].contiguous(),), ((a - start[n]).contiguous(),))
            out[n] = at_start + change
        return out

    create_graph = torch.is_grad_enabled()
    weights = dict(state.weights)
    mom = dict(state.momentum)
    anchor = state.chunk_weights
    ys = []
    for t in range(seq):
        if (state.offset + t) % chunk_size == 0:
            anchor = weights
        assert anchor is not None
        at = readout(anchor)
        if plain:
            grads = token_gradients(
                memory, objective, at, k[:, :, t : t + 1], v[:, :, t : t + 1], create_graph
            )
        else:
            grads = {n: torch.zeros_like(w) for n, w in weights.items()}
            for j in range(t, t + c):  # the window ending at token t, in extended indices
                g = token_gradients(
                    memory, objective, at, k_ext[:, :, j : j + 1], v_ext[:, :, j : j + 1], create_graph
                )
                grads = {n: grads[n] + _per_head(w_ext[:, :, j], g[n]) * g[n] for n in grads}
        chunk_end = (state.offset + t + 1) % chunk_size == 0
        new_weights = {}
        for name, w in weights.items():
            theta = _per_head(lr_map[name][:, :, t], w)
            if momentum is None:
                step = -theta * grads[name]
            else:
                mom[name] = _per_head(momentum[:, :, t], w) * mom[name] - theta * grads[name]
                step = mom[name]
            if design.steps:  # Muon: no write inside the chunk, the orthogonalised momentum at its end
                step = chunk_size * orthogonal_step(step, w.ndim - 2, design.steps) if chunk_end else None
            if decay is None:
                keep = w
            elif target is None:
                keep = (1 - _per_head(decay[:, :, t], w)) * w
            else:
                keep = target[name] + (1 - _per_head(decay[:, :, t], w)) * (w - target[name])
            new_weights[name] = keep if step is None else keep + step
        weights = new_weights
        ys.append(memory.forward_with(read_weights(weights, anchor, chunk_end), q[:, :, t : t + 1]))
    offset = (state.offset + seq) % chunk_size
    window = None
    if c > 1:
        window = {"k": k_ext[:, :, seq:], "v": v_ext[:, :, seq:], "weight": w_ext[:, :, seq:]}
    new_state = MemoryState(weights, mom, anchor if offset else None, offset, chunk_size, window)
    return torch.cat(ys, dim=2), new_state.without_subnormals()
