"""How a memory model reads its fast weights: three interpretations of one forward pass.

A built-in memory model writes its forward once, in terms of two operations on named fast
weights, and the functional core evaluates it three ways:

``ops.linear(name, x)``
    applies the matrix fast weight ``name`` (shape ``(dim_out, dim_in)``, ``y = W x``);
``ops.vector(name)``
    returns the vector fast weight ``name`` (a gain or a bias), broadcastable over tokens.

- :class:`DirectOps` applies given weights: the plain forward, and the naive reference.
- :class:`KeyPathOps` applies the chunk-start weights to the keys and records what the
  per-token gradients need: for a linear layer the gradient of token ``i``'s loss is the outer
  product ``delta_i x_i^T`` (kept factored, never materialised per token).
- :class:`DualOps` applies the per-token weights of a chunk,
  ``W_t = beta_t W_s + gamma_t S_s - sum_{i<=t} A_{ti} g_i``, without building them: for a
  linear layer ``W_t h_t = beta_t W_s h_t + gamma_t S_s h_t - sum_i A_{ti} (x_i . h_t) delta_i``
  (the dual form of TTT, with the momentum and forgetting of paper eqs. 13-14 in ``A``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from memory_blocks.functional.memorize_op.weight_tape import plain_read

__all__ = ["DirectOps", "DualOps", "Factor", "KeyPathOps", "Reader"]

#: How a fast-weight matrix is read: ``read(h, W) = h @ W^T`` (a :class:`WeightTape` records it).
Reader = Callable[[Tensor, Tensor], Tensor]

#: A per-token gradient in factored form: ``(delta, x)`` for a matrix (gradient of token i is
#: ``delta_i x_i^T``), or ``(g,)`` for a vector (gradient of token i is ``g_i``).
Factor = tuple[Tensor, ...]


class DirectOps:
    """Apply weights with leading dimensions ``(*lead)`` to tokens ``(*lead, seq, dim_in)``.

    Args:
        weights: name -> weight.
        read: how a matrix is applied (``h @ W^T`` unless a weight tape records it).
    """

    def __init__(self, weights: dict[str, Tensor], read: Reader = plain_read) -> None:
        self.weights = weights
        self.read = read

    def linear(self, name: str, x: Tensor) -> Tensor:
        return self.read(x, self.weights[name])

    def vector(self, name: str) -> Tensor:
        return self.weights[name].unsqueeze(-2)


class KeyPathOps:
    """The forward at the gradient point, recording the factors of each token's gradient.

    Args:
        anchor: ops that apply the gradient point's weights (:class:`DirectOps` for
            materialised weights, or a one-row :class:`DualOps` for weights held in the
            closed form of the current block).
        seq_len: tokens in the forward (vector gradients are kept per token).
    """

    def __init__(self, anchor: DirectOps | DualOps, seq_len: int) -> None:
        self.anchor = anchor
        self._seq_len = seq_len
        self._inputs: dict[str, Tensor] = {}
        self._targets: dict[str, Tensor] = {}

    def linear(self, name: str, x: Tensor) -> Tensor:
        self._check_once(name)
        z = self.anchor.linear(name, x)
        if not z.requires_grad:
            z.requires_grad_()
        self._inputs[name] = x
        self._targets[name] = z
        return z

    def vector(self, name: str) -> Tensor:
        self._check_once(name)
        w = self.anchor.vector(name)
        # One copy per token, so that the gradient with respect to it is per token.
        per_token = w.expand(*w.shape[:-2], self._seq_len, w.shape[-1])
        if not per_token.requires_grad:
            per_token = per_token.detach().requires_grad_()
        self._targets[name] = per_token
        return per_token

    def factors(self, loss: Tensor, create_graph: bool) -> dict[str, Factor]:
        """Per-token gradient factors of ``loss`` (a sum of per-token losses)."""
        names = list(self._targets)
        grads = torch.autograd.grad(
            loss, [self._targets[n] for n in names], create_graph=create_graph
        )
        out: dict[str, Factor] = {}
        for name, g in zip(names, grads):
            if name in self._inputs:
                x = self._inputs[name]
                out[name] = (g, x if create_graph else x.detach())
            else:
                out[name] = (g,)
        return out

    def _check_once(self, name: str) -> None:
        if name in self._targets:
            raise ValueError(
                f"memory model uses fast weight {name!r} twice in one forward; the factored "
                "gradient path needs each fast weight used once (use a plain nn.Module memory "
                "through ModuleMemory for weight tying)"
            )


class DualOps:
    """Apply per-token weights held in closed form, without materialising them.

    Row ``t`` reads ``W_t = beta_t W_s + gamma_t S_s - sum_i A_{ti} g_i`` over ``M`` source
    tokens ``i`` whose gradients ``g_i`` are given in factored form. With one row of
    coefficients (shapes ``(batch, heads, 1)`` and ``(batch, heads, 1, M)``) every token reads
    the same weights: that is how a chunk's key path reads its chunk-start weights.

    Args:
        start: weights ``W_s`` where the recurrence starts (leading ``(batch, heads)``).
        momentum: momentum ``S_s`` there, or ``None`` when ``gamma`` is ``None``.
        beta: ``(batch, heads, rows)``, the weight of ``W_s`` (``None``: all ones).
        gamma: ``(batch, heads, rows)``, the weight of ``S_s``, or ``None``.
        mix: name -> ``(batch, heads, rows, M)``, ``A``.
        factors: name -> the per-token gradient factors of the ``M`` source tokens.
        read: how ``W_s`` and ``S_s`` are applied (``h @ W^T`` unless a weight tape records it).
    """

    def __init__(
        self,
        start: dict[str, Tensor],
        momentum: dict[str, Tensor] | None,
        beta: Tensor | None,
        gamma: Tensor | None,
        mix: dict[str, Tensor],
        factors: dict[str, Factor],
        read: Reader = plain_read,
    ) -> None:
        self.start = start
        self.read = read
        self.momentum = momentum
        self.beta = None if beta is None else beta.unsqueeze(-1)
        self.gamma = None if gamma is None else gamma.unsqueeze(-1)
        self.mix = mix
        self.factors = factors

    def linear(self, name: str, h: Tensor) -> Tensor:
        y = self.read(h, self.start[name])
        if self.beta is not None:
            y = y * self.beta
        if self.gamma is not None and self.momentum is not None:
            y = torch.addcmul(y, self.read(h, self.momentum[name]), self.gamma)
        delta, x = self.factors[name]
        return y - ((h @ x.mT) * self.mix[name]) @ delta

    def vector(self, name: str) -> Tensor:
        w = self.start[name].unsqueeze(-2)
        if self.beta is not None:
            w = w * self.beta
        if self.gamma is not None and self.momentum is not None:
            w = w + self.momentum[name].unsqueeze(-2) * self.gamma
        (g,) = self.factors[name]
        return w - self.mix[name] @ g
