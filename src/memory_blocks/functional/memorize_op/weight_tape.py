"""Gradients of full-size fast weights read by many small products, summed in one product.

Inside a block the same fast-weight matrix ``W`` (leading ``(batch, heads)``) is read many
times by a few rows at a time: once per chunk on the key path (``h @ W^T``), once more by the
inner gradient (``g @ W``, which the backward pass differentiates again), and by the block's
retrievals. Left to autograd, every read yields its own full-size gradient ``dP^T h`` (a product
over as few rows as a chunk has tokens, often written in a transposed layout) and autograd then
adds these full-size tensors one by one: that summing, not the arithmetic, is much of the
cost of the backward pass.

A :class:`WeightTape` reads ``W`` detached and records each read's two row factors instead.
After the block's backward pass has produced the gradient arriving at every recorded read (by
asking ``torch.autograd.grad`` for the gradients of those intermediate tensors), the gradient of
``W`` is the single product ``A^T B`` of the stacked factors (:meth:`WeightTape.gradients`).

- a read ``P = h @ W^T`` contributes ``dP^T h``;
- its backward's read ``O = g @ W`` (recorded when the backward itself is recorded, as it is
  for the inner gradient) contributes ``g^T dO``.

The result is exactly the gradient autograd would have summed (the same terms, added in
another order).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["WeightTape", "plain_read"]


def plain_read(
    h: Float[Tensor, "*batch rows dim_in"], w: Float[Tensor, "*weight_batch dim_out dim_in"]
) -> Float[Tensor, "*out_batch rows dim_out"]:
    """``h @ W^T``: how a fast-weight matrix is read when no tape records it."""
    return h @ w.mT


class _ReadT(torch.autograd.Function):
    """``g @ W`` with ``W`` treated as a constant (its gradient goes through the tape)."""

    @staticmethod
    def forward(ctx: Any, g: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return g @ w

    @staticmethod
    def backward(ctx: Any, d: Tensor) -> tuple[Tensor, None]:
        (w,) = ctx.saved_tensors
        return d @ w.mT, None


class _Read(torch.autograd.Function):
    """``h @ W^T`` with ``W`` treated as a constant; a recorded backward goes through the tape."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, w: Tensor, tape: WeightTape, key: int) -> Tensor:
        ctx.save_for_backward(w)
        # A weak reference: the tape holds this node's output, so a strong one would be a cycle.
        ctx.tape, ctx.key = weakref.ref(tape), key
        return h @ w.mT

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        (w,) = ctx.saved_tensors
        tape = ctx.tape()
        if tape is None or not torch.is_grad_enabled():
            return g @ w, None, None, None
        out = _ReadT.apply(g, w)
        tape.record(ctx.key, g, out, transposed=True)
        return out, None, None, None


class WeightTape:
    """Records the reads of some fast-weight matrices so that their gradients are summed once.

    Args:
        weights: the tensors to track (leaves of the recorded computation, leading
            ``(batch, heads)``); reads of any other tensor are plain products.
    """

    def __init__(self, weights: list[Tensor]) -> None:
        self._tracked = {id(w): w for w in weights}
        # key -> list of (row factor, recorded tensor whose gradient is the other factor, transposed)
        self._reads: dict[int, list[tuple[Tensor, Tensor, bool]]] = {k: [] for k in self._tracked}

    def read(
        self, h: Float[Tensor, "*batch rows dim_in"], w: Float[Tensor, "*weight_batch dim_out dim_in"]
    ) -> Float[Tensor, "*out_batch rows dim_out"]:
        """``h @ W^T``, recorded when ``W`` is tracked and gradients are being recorded."""
        key = id(w)
        if key not in self._tracked or not torch.is_grad_enabled():
            return plain_read(h, w)
        out = _Read.apply(h, w.detach(), self, key)
        self.record(key, h, out, transposed=False)
        return out

    def record(self, key: int, factor: Tensor, out: Tensor, *, transposed: bool) -> None:
        """Notes a read of weight ``key``: input rows ``factor`` and output ``out``."""
        self._reads[key].append((factor.detach(), out, transposed))

    def clear(self) -> None:
        """Drops every record (and with them the recorded graph they reference)."""
        self._reads = {k: [] for k in self._tracked}
        self._tracked = {}

    def outputs(self) -> list[Tensor]:
        """The recorded read outputs, whose gradients :meth:`gradients` needs, in order."""
        return [out for reads in self._reads.values() for _, out, _ in reads]

    def gradients(
        self, output_grads: list[Tensor | None], add_to: dict[int, Tensor | None]
    ) -> dict[int, Tensor]:
        """Tracked weight ``id`` -> its gradient through the recorded reads plus ``add_to[id]``.

        Args:
            output_grads: the gradients of :meth:`outputs` (``None`` where unused), in order.
            add_to: gradients from elsewhere, summed in the same product (not modified).
        """
        it = iter(output_grads)
        result: dict[int, Tensor] = {}
        for key, reads in self._reads.items():
            left: list[Tensor] = []
            right: list[Tensor] = []
            for factor, _, transposed in reads:
                grad = next(it)
                if grad is None:
                    continue
                # P = h W^T: dW = dP^T h.  O = g W: dW = g^T dO.
                left.append(factor if transposed else grad)
                right.append(grad if transposed else factor)
            if not left:
                continue
            w = self._tracked[key]
            a, b = torch.cat(left, dim=-2), torch.cat(right, dim=-2)
            base = add_to.get(key)
            if base is None:
                result[key] = (a.mT @ b).expand(w.shape)
            else:
                base = base.expand(w.shape)
                lead, rows, cols = base.shape[:-2], base.shape[-2], base.shape[-1]
                summed = torch.baddbmm(
                    base.reshape(-1, rows, cols),
                    a.mT.reshape(-1, rows, a.shape[-2]),
                    b.reshape(-1, b.shape[-2], cols),
                )
                result[key] = summed.view(*lead, rows, cols)
        return result
