"""One block of chunks for an MLP-family memory with squared error, written out by hand.

The general fast path (:mod:`memory_blocks.functional.memorize_op.factored_block`) lets autograd take each token's
inner gradient (``create_graph=True``) and then differentiates that graph again in the backward
pass: correct for any factored memory and objective, but a graph of about a thousand small
operations per chunk, most of them saved for the backward pass. For the memories most people
run (:class:`~memory_blocks.memories.MLPMemory` of any depth, with or without the residual
LayerNorm, and the bias-free :class:`~memory_blocks.memories.LinearMemory`) with the paper's
squared error (eq. 12) this module computes the same block with explicit formulas:

- forward: per chunk, the memory's forward at the chunk's gradient point and its backward
  (the inner gradient, eq. 12) written out, their factors stored in preallocated buffers; the
  block's retrievals in the dual form; the block-end weights and momentum (eqs. 13-14). The
  first layer's input on the key path is the keys, known before the first chunk: its reads of
  the block's start weights are one product per matrix for the whole block, which each chunk
  scales by its point's coefficients (:class:`_StartReads`). A later layer's input depends on
  the chunks before it, so its reads are per chunk; they take the point's start terms
  ``b W + c S + W_0`` as one matrix (:meth:`_Block._combined`), one product per read;
- backward: the reverse of all of it, chunk by chunk from the last, with the second
  derivatives of the inner gradient written out (activation, LayerNorm, squared error), every
  full-size weight gradient formed as one product of stacked row factors, and the chunk points'
  coefficient gradients of the combined reads one product per matrix and coefficient for the
  whole block. The LayerNorm gain (a vector) at the chunk points is handled the same way: its
  start terms for every point are formed once per block in the forward pass, and the gradients
  arriving at the points are taken back through their coefficients once per block, each chunk's
  gain factors pulling theirs from the later points when the loop reaches it.

Nothing of the block is recorded by autograd: it is one node whose backward is this code.
It keeps the factors, the pre-activations and the first layer's reads of the start weights
(about 34 KB per token and batch row at dim 256 with a 4x hidden layer) unless ``keep`` is
false, in which case the backward pass runs the forward again first. A backward pass that is
itself recorded (``create_graph=True``, e.g. second derivatives of the outer loss) goes through
the general path instead, on the same inputs, so that its result stays differentiable.

Notation (per batch row and head, flattened to a leading ``N``): a block of ``M`` tokens in
chunks, start weights ``W`` and momentum ``S`` per matrix, per-token gradient factors
``delta_i x_i^T``; the weights after token ``t`` are
``beta_t W + gamma_t S - sum_{i<=t} A_ti delta_i x_i^T`` (:mod:`memory_blocks.functional.memorize_op.recurrence`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from memory_blocks.functional.memorize_op.recompute import input_gradients
from memory_blocks.functional.memorize_op.recurrence import ChunkCoefficients
from memory_blocks.functional.memorize_op.weight_update import dot_last

__all__ = ["FusedSpec", "fused_block"]

_LN_EPS = 1e-5  # F.layer_norm's default, which the memories' forward uses


@dataclass(frozen=True)
class FusedSpec:
    """What the hand-written block needs to know of a memory model.

    ``f(x) = x + LN(W_L s(... s(W_1 x))) * g`` with ``gain`` naming ``g``, or
    ``W_L s(... s(W_1 x))`` without it (``gain`` ``None``).

    Attributes:
        matrices: the fast-weight matrix names, first layer first.
        activation: ``"gelu"``, ``"silu"``, ``"relu"``, ``"tanh"`` or ``"identity"``.
        gain: the LayerNorm gain's name in the residual form, else ``None``.
    """

    matrices: tuple[str, ...]
    activation: str
    gain: str | None


class _Activation:
    """An activation with its first derivative applied to a gradient (one fused kernel where
    torch has one) and its second derivative (``None`` where it is zero)."""

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        backward: Callable[[Tensor, Tensor], Tensor],
        second: Callable[[Tensor], Tensor] | None,
    ) -> None:
        self.forward, self.backward, self.second = forward, backward, second


def _gelu_second(x: Tensor) -> Tensor:
    # gelu(x) = x Phi(x): gelu'' = phi(x) (2 - x^2)
    xx = x * x
    return torch.exp(-0.5 * xx).mul_(1 / math.sqrt(2 * math.pi)).mul_(2 - xx)


def _silu_second(x: Tensor) -> Tensor:
    # silu(x) = x s(x): silu'' = s (1 - s) (2 + x (1 - 2 s))
    sg = torch.sigmoid(x)
    return sg * (1 - sg) * (2 + x * (1 - 2 * sg))


def _tanh_second(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return -2 * t * (1 - t * t)


#: name -> the activation and its derivatives.
ACTIVATIONS: dict[str, _Activation] = {
    "gelu": _Activation(
        torch.nn.functional.gelu, lambda g, x: torch.ops.aten.gelu_backward(g, x), _gelu_second
    ),
    "silu": _Activation(
        torch.nn.functional.silu, lambda g, x: torch.ops.aten.silu_backward(g, x), _silu_second
    ),
    "relu": _Activation(torch.relu, lambda g, x: torch.where(x > 0, g, torch.zeros_like(g)), None),
    "tanh": _Activation(torch.tanh, lambda g, x: g * (1 - torch.tanh(x).square()), _tanh_second),
    "identity": _Activation(lambda x: x, lambda g, x: g, None),
}


def _flat(t: Tensor | None, keep: int) -> Tensor | None:
    """``(batch, heads, *rest)`` -> ``(batch * heads, *rest)`` (``keep`` = len(rest))."""
    if t is None:
        return None
    return t.reshape(-1, *t.shape[t.ndim - keep :])


def _into(out: Tensor, op: Callable[..., Tensor], *args: Any) -> Tensor:
    """``op(*args)`` written into ``out`` (a view into a buffer) and returned: through ``out=``,
    without a temporary, in eager mode; as a copy when dynamo traces the block (it does not take
    ``out=`` into a non-contiguous view, and the compiler fuses the copy anyway)."""
    if torch.compiler.is_compiling():
        return out.copy_(op(*args))
    return op(*args, out=out)


def _points_at(m: int, chunk: int) -> slice:
    """The rows of a block's coefficients (over ``m`` tokens) that are the points of its chunks
    after the first: chunk ``j >= 1`` takes its gradient at the weights after token ``j chunk - 1``."""
    return slice(chunk - 1, m - 1, chunk)


def _layer_norm(z: Tensor, out: Tensor | None = None, rstd_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(normalised z, 1 / std)``, written into ``out`` and ``rstd_out`` when given."""
    c = z - z.mean(-1, keepdim=True)
    var = c.square().mean(-1, keepdim=True).add_(_LN_EPS)
    rstd = var.rsqrt_() if rstd_out is None else _into(rstd_out, torch.rsqrt, var)
    return (c.mul_(rstd) if out is None else _into(out, torch.mul, c, rstd)), rstd


def _project(u: Tensor, n: Tensor) -> Tensor:
    """``u - mean(u) - n mean(u n)``: the LayerNorm Jacobian (up to ``rstd``), symmetric."""
    return u - u.mean(-1, keepdim=True) - n * (u * n).mean(-1, keepdim=True)


class _Point:
    """The weights at one place of the block, in closed form (see the module notes).

    ``b``, ``c``: ``(N, rows, 1)`` or ``None`` (1 and 0); ``a``: ``(N, rows, s)`` mixing the
    first ``s`` tokens' factors, or ``None`` when ``s == 0``.
    """

    __slots__ = ("b", "c", "a", "s")

    def __init__(self, b: Tensor | None, c: Tensor | None, a: Tensor | None, s: int) -> None:
        self.b, self.c, self.a, self.s = b, c, a, s


class _Rows:
    """The gradient of one fast-weight matrix ``W`` (and of its momentum ``S``) in a block.

    Every read ``z = b x W^T + c x S^T`` (or transposed) of the block contributes
    ``b g^T x`` to ``dW`` and ``c g^T x`` to ``dS``. The rows are written into one buffer as
    they come (left factors ``[b g | c g]`` side by side, right factors ``x``), and both
    gradients are then one product ``left^T right`` of shape ``(2 out, in)``, added to the
    gradients that arrive from after the block (:meth:`set_bases`).
    """

    def __init__(
        self, like: Tensor, w: Tensor, rows: int, momentum: bool, base: bool = False, plain: bool = False
    ) -> None:
        self.out, self.inn = w.shape[-2], w.shape[-1]
        self.momentum = momentum
        # With a base (W_0, shared by every row: forgetting towards W_0), each read also
        # contributes g^T x, unscaled, to W_0's gradient: a third block of left factors.
        scaled = self.out * (2 if momentum else 1)
        self.base_at = scaled if base else None
        width = scaled + (self.out if base else 0)
        self.left = like.new_empty(like.shape[0], rows, width)
        self.right = like.new_empty(like.shape[0], rows, self.inn)
        # ``plain``: keep the unscaled left factors too (the base's block holds them when there is
        # one), for the coefficient gradients taken for the whole block (:meth:`coefficient_dots`).
        self.plain = like.new_empty(like.shape[0], rows, self.out) if plain and not base else None
        self.base: Tensor | None = None
        self.first = rows  # rows before the first one written take no part (no retrieval gradient)

    def put(self, row0: int, left: Tensor, right: Tensor, b: Tensor | None, c: Tensor | None) -> None:
        r = slice(row0, row0 + left.shape[1])
        self.first = min(self.first, row0)
        o = self.out
        rows = self.left[:, r]
        if b is None:
            rows[..., :o] = left
        else:
            _into(rows[..., :o], torch.mul, left, b)
        if self.momentum:
            if c is None:
                rows[..., o : 2 * o] = 0
            else:
                _into(rows[..., o : 2 * o], torch.mul, left, c)
        if self.base_at is not None:
            rows[..., self.base_at :] = left
        elif self.plain is not None:
            self.plain[:, r] = left
        self.right[:, r] = right

    def set_bases(
        self, gw: Tensor | None, b: Tensor | None, c: Tensor | None, gs: Tensor | None, decay: Tensor | None
    ) -> None:
        """The gradients arriving from after the block: ``dW = b gW'``, ``dS = c gW' + E gS'``
        (``gW'``, ``gS'`` the gradients of the block-end weights and momentum)."""
        if gw is None and gs is None:
            return
        o = self.out
        base = self.left.new_empty(self.left.shape[0], self.base_at or self.left.shape[-1], self.inn)
        if gw is None:
            base[:, :o].zero_()
        elif b is None:
            base[:, :o] = gw
        else:
            _into(base[:, :o], torch.mul, gw, _bcast(b, gw))
        if self.momentum:
            if gw is not None and c is not None:
                _into(base[:, o:], torch.mul, gw, _bcast(c, gw))
            else:
                base[:, o:].zero_()
            if gs is not None:
                base[:, o:].addcmul_(gs, _bcast(decay, gs))
        self.base = base

    def through(self, rows: slice, w: Tensor, s: Tensor | None, base: Tensor | None) -> Tensor:
        """The gradient of the inputs ``x`` of the non-transposed reads written at ``rows``,
        through the start weights only: ``(b g) W + (c g) S + g W_0`` (the left factors hold
        ``b g``, ``c g`` and ``g``)."""
        left = self.left[:, rows]
        o = self.out
        gx = left[..., :o] @ w
        if self.momentum and s is not None:
            gx = gx.baddbmm_(left[..., o : 2 * o], s)
        if self.base_at is not None and base is not None:
            gx += (left[..., self.base_at :].flatten(0, 1) @ base).view_as(gx)
        return gx

    def coefficient_dots(self, rows: slice, w: Tensor) -> Tensor:
        """``(g W) . x`` for each read written at ``rows`` (``(N, rows)``): the gradient of the
        read's coefficient of ``W`` (``b`` of ``z = b x W^T + ...``, or of its transposed form), one
        product for all those rows (``w``: ``W``, or ``S`` for the coefficient ``c``)."""
        if self.base_at is not None:
            plain = self.left[:, rows, self.base_at :]
        else:
            assert self.plain is not None, "coefficient_dots needs the unscaled rows (plain=True)"
            plain = self.plain[:, rows]
        return dot_last(plain @ w, self.right[:, rows], 1)

    def gradients(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(dW, dS, dW_0)`` (``dS`` ``None`` without momentum, ``dW_0`` without a base)."""
        left, right = self.left[:, self.first :], self.right[:, self.first :]
        d_base = None
        if self.base_at is not None:
            d_base = left[..., self.base_at :].flatten(0, 1).mT @ right.flatten(0, 1)
            left = left[..., : self.base_at]
        if self.base is None:
            both = left.mT @ right
        else:
            both = self.base.baddbmm_(left.mT, right)
        o = self.out
        return both[:, :o], (both[:, o:] if self.momentum else None), d_base


def _scaled(x: Tensor, s: Tensor | None) -> Tensor:
    return x if s is None else x * s


class _StartReads:
    """Rows ``x`` read through the block's start weights, unscaled: ``x W^T``, ``x S^T`` (or
    ``None`` without momentum) and ``x W_0^T`` (or ``None`` without a base).

    The first layer's key-path input is the keys, known for the whole block before its first
    chunk, so its reads of the start weights are one product per matrix for the block instead
    of one per chunk; each chunk then only scales them by its point's coefficients.
    """

    __slots__ = ("w", "s", "base")

    def __init__(self, w: Tensor | None, s: Tensor | None, base: Tensor | None) -> None:
        self.w, self.s, self.base = w, s, base

    @classmethod
    def of(cls, x: Tensor, w: Tensor | None, s: Tensor | None, base: Tensor | None) -> _StartReads:
        """The reads of ``x`` through each matrix given (``None``: not read)."""
        return cls(
            None if w is None else x @ w.mT,
            None if s is None else x @ s.mT,
            None if base is None else (x.flatten(0, 1) @ base.mT).view(*x.shape[:2], -1),
        )

    def rows(self, sl: slice) -> _StartReads:
        return _StartReads(*(None if t is None else t[:, sl] for t in (self.w, self.s, self.base)))


class _Block:
    """The hand-written block: forward (:meth:`run`) and backward (:meth:`backward`)."""

    def __init__(
        self,
        spec: FusedSpec,
        lr_keys: dict[str, str],
        chunk: int,
        has_momentum: bool,
    ) -> None:
        self.spec, self.lr_keys, self.chunk = spec, lr_keys, chunk
        self.has_momentum = has_momentum
        self.act = ACTIVATIONS[spec.activation]

    # ----------------------------------------------------------------------------- reads
    @staticmethod
    def _combined(w: Tensor, s: Tensor | None, p: _Point, base: Tensor | None) -> Tensor | None:
        """``b W + c S + W_0``: the part of a chunk point's weights taken from the block's start
        (``b``, ``c``: one number per row ``N``), as one matrix, so that each read of the chunk is
        one product instead of one per term; ``None`` where there is one term only (``W``).

        A chunk's 16-row product of a 256 x 1024 matrix takes several times as long as a pass over
        the matrix (on the 2-core CPU of docs/benchmarks.md about 210 us against 25 us to sum it),
        so the sum costs about a third of one such product, and the chunk's reads of a matrix
        (forward, transposed, and both again in the backward pass) share it."""
        with_s = s is not None and p.c is not None
        if base is not None:
            out = base + w if p.b is None else torch.addcmul(base, w, p.b)
            return out.addcmul_(s, p.c) if with_s else out
        if not with_s:
            return None
        return torch.addcmul(w, s, p.c) if p.b is None else (w * p.b).addcmul_(s, p.c)

    @staticmethod
    def _read(
        x: Tensor, w: Tensor, s: Tensor | None, p: _Point, xs: Tensor, ds: Tensor, transposed: bool = False,
        base: Tensor | None = None, pre: _StartReads | None = None, comb: Tensor | None = None,
    ) -> Tensor:
        """``x P^T`` for the weights ``P`` at point ``p`` (``xs``, ``ds``: factor rows), or
        ``x P`` when ``transposed`` (the inner backward through a layer); with ``base`` (``W_0``,
        the weights are displacements from it) ``x (W_0 + P)^T`` or ``x (W_0 + P)``.

        ``pre``: ``x``'s reads of the block's start weights, already taken (``x W^T``, ``x S^T``,
        ``x W_0^T`` for these rows): only the point's scaling and its factor rows are left.
        ``comb``: the point's start terms as one matrix (:meth:`_combined`), read instead of
        ``w``, ``s`` and ``base``."""
        if pre is not None:
            assert pre.w is not None
            z = _scaled(pre.w, p.b)
            if pre.s is not None and p.c is not None:
                z = torch.addcmul(z, pre.s, p.c)
            if p.a is not None:
                z = torch.baddbmm(z, torch.bmm(x, xs[:, : p.s].mT).mul_(p.a), ds[:, : p.s], alpha=-1)
            return z if pre.base is None else z + pre.base
        if comb is not None:
            z = torch.bmm(x, comb if transposed else comb.mT)
            base = None
            if transposed:
                xs, ds = ds, xs
        else:
            if base is not None:
                base = base if transposed else base.mT  # W_0 is read the way W is
            if transposed:
                w, s, xs, ds = w.mT, None if s is None else s.mT, ds, xs
            z = _scaled(x, p.b) @ w.mT
            if s is not None and p.c is not None:
                z = torch.baddbmm(z, x * p.c, s.mT)
        if p.a is not None:
            # z -= ((x inner^T) * a) outer, with (inner, outer) = (xs, ds), or (ds, xs) transposed
            z = torch.baddbmm(z, torch.bmm(x, xs[:, : p.s].mT).mul_(p.a), ds[:, : p.s], alpha=-1)
        return z if base is None else z + x @ base

    def _read_back(
        self,
        g: Tensor,
        x: Tensor,
        name: str,
        w: Tensor,
        s: Tensor | None,
        p: _Point,
        xs: Tensor,
        ds: Tensor,
        acc: dict[str, Any],
        transposed: bool,
        row0: int,
        pre: _StartReads | None = None,
        comb: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        """Backward of ``z = read(x)`` (or of ``z = read_t(x)`` when ``transposed``).

        Writes the weight gradients' row factors into ``acc["left"]``/``acc["right"]`` from row
        ``row0`` on (see :class:`_Rows`; with a base ``W_0`` the read is
        ``x (W_0 + P)^T`` and its rows count for ``W_0`` too) and adds the factor-row gradients into
        ``acc["gx"]``/``acc["gd"]``; returns ``(grad of x, grad of b, grad of c,
        grad of a)`` (``b``/``c`` gradients summed over features, per row of ``p``).

        With ``pre`` (the forward's reads of the start weights, see :meth:`_read`) the gradient of
        ``x`` leaves out the paths through ``W``, ``S`` and ``W_0``: the caller takes them for the
        whole block at once from the rows written here (:meth:`_Rows.through`); it is ``None``
        when nothing else is left. With ``comb`` (the forward read it, :meth:`_combined`) the
        gradient of ``x`` goes through it, and the gradients of ``b`` and ``c`` are left to the
        caller, who takes them for the whole block (:meth:`_Rows.coefficient_dots`): ``None``."""
        left, right = (g, x) if not transposed else (x, g)
        acc["rows"][name].put(row0, left, right, p.b, p.c)
        gx: Tensor | None
        gc = None
        if pre is not None:
            gx = None
            gb = (g * pre.w).sum(-1, keepdim=True) if p.b is not None and pre.w is not None else None
            if pre.s is not None and p.c is not None:
                gc = (g * pre.s).sum(-1, keepdim=True)
        elif comb is not None:
            gx = torch.bmm(g, comb if not transposed else comb.mT)
            gb = None
        else:
            # Through W (and S): z = b (x W^T) [non-transposed] or z = b (x W) [transposed].
            gw = g @ w if not transposed else g @ w.mT
            gx = _scaled(gw, p.b)
            gb = (gw * x).sum(-1, keepdim=True) if p.b is not None else None
            if s is not None and p.c is not None:
                gs = g @ s if not transposed else g @ s.mT
                gx = torch.addcmul(gx, gs, p.c)
                gc = (gs * x).sum(-1, keepdim=True)
        ga = None
        if p.a is not None:
            # z -= ((x inner^T) * a) outer, with (inner, outer) = (xs, ds), or (ds, xs) transposed
            if not transposed:
                inner, outer, g_inner, g_outer = xs, ds, acc["gx"][name], acc["gd"][name]
            else:
                inner, outer, g_inner, g_outer = ds, xs, acc["gd"][name], acc["gx"][name]
            inner, outer = inner[:, : p.s], outer[:, : p.s]
            r = torch.bmm(x, inner.mT)
            neg = torch.baddbmm(r, g, outer.mT, beta=0, alpha=-1)  # -(g outer^T); r is ignored
            ga = neg * r
            gr = neg * p.a
            gx = torch.bmm(gr, inner) if gx is None else torch.baddbmm(gx, gr, inner)
            g_inner[:, : p.s].baddbmm_(gr.mT, x)
            g_outer[:, : p.s].baddbmm_((r * p.a).mT, g, alpha=-1)
        base = acc["base"].get(name)
        if base is not None and pre is None and comb is None:
            # z += x W_0^T (or x W_0); W_0's gradient comes from the rows put above (_Rows)
            gx = gx + (g @ base.mT if transposed else g @ base)
        return gx, gb, gc, ga

    # --------------------------------------------------------------------------- forward
    def run(self, parts: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """The block's retrievals and everything the backward pass needs (flat tensors;
        ``parts`` as :meth:`_Layout.unpack` gives them)."""
        q, k, v = parts["q"], parts["k"], parts["v"]
        beta, gamma, mix = parts["beta"], parts["gamma"], parts["mix"]
        weights, momentum = parts["weights"], parts["momentum"]
        base = parts["base"]
        spec = self.spec
        names, L = spec.matrices, len(spec.matrices)
        n_rows, m = k.shape[0], k.shape[1]
        mats = {nm: weights[nm] for nm in names}
        moms = {nm: momentum[nm] for nm in names} if self.has_momentum else {nm: None for nm in names}
        # Factor buffers: x rows (layer inputs) and delta rows (output gradients) per matrix.
        xs = {names[0]: k}
        for i in range(1, L):
            xs[names[i]] = k.new_empty(n_rows, m, mats[names[i]].shape[-1])
        ds = {nm: k.new_empty(n_rows, m, mats[nm].shape[-2]) for nm in names}
        saved: dict[str, Any] = {"xs": xs, "ds": ds}
        pre = [k.new_empty(n_rows, m, mats[names[i]].shape[-2]) for i in range(L - 1)]  # key-path z_l
        da = [k.new_empty(n_rows, m, mats[names[i + 1]].shape[-1]) for i in range(L - 1)]  # read_t results
        saved["pre"], saved["da"] = pre, da
        gain = spec.gain
        if gain is not None:
            dg = k.new_empty(n_rows, m, k.shape[-1])
            norm = k.new_empty(n_rows, m, k.shape[-1])
            rstd = k.new_empty(n_rows, m, 1)
            errs = k.new_empty(n_rows, m, k.shape[-1])  # the inner loss's output gradients
            saved["dg"], saved["norm"], saved["rstd"], saved["err"] = dg, norm, rstd, errs
        gains_at: list[Tensor] = []
        if gain is not None:
            # the start terms of the gain at every chunk point (b g + c g_S + g_0), for the block
            g_w, g_s, g_0 = weights[gain], momentum.get(gain) if self.has_momentum else None, base.get(gain)
            gain_starts = [self._gain_at(g_w, g_s, _Point(None, None, None, 0), dg, g_0)]
            if m > self.chunk:
                later = self._gain_at(g_w, g_s, self._later_points(beta, gamma, None, m), dg, g_0)
                gain_starts.append(later.expand(-1, (m - 1) // self.chunk, -1))  # one row when b, c are absent
            gain_start = torch.cat(gain_starts, 1)  # (N, chunks, dim)
        first = names[0]
        k_reads = _StartReads.of(k, mats[first], moms[first], base.get(first))
        for j, s0 in enumerate(range(0, m, self.chunk)):
            e0 = min(s0 + self.chunk, m)
            p = self._point(beta, gamma, mix, s0)
            kk, vv = k[:, s0:e0], v[:, s0:e0]
            combs = {nm: self._combined(mats[nm], moms[nm], p[nm], base.get(nm)) for nm in names[1:]}
            h = kk
            for i, nm in enumerate(names):
                if i > 0:
                    xs[nm][:, s0:e0] = h
                z = self._read(h, mats[nm], moms[nm], p[nm], xs[nm], ds[nm], base=base.get(nm),
                               pre=k_reads.rows(slice(s0, e0)) if i == 0 else None, comb=combs.get(nm))
                if i < L - 1:
                    pre[i][:, s0:e0] = z
                    h = self.act.forward(z)
                else:
                    h = z
            if gain is not None:
                nrm, rs = _layer_norm(h, norm[:, s0:e0], rstd[:, s0:e0])
                gp = gain_start[:, j : j + 1]
                if p[gain].a is not None:  # the chunks before: - a dg
                    gp = torch.baddbmm(gp, p[gain].a, dg[:, : p[gain].s], alpha=-1)
                gains_at.append(gp)
                err = _into(errs[:, s0:e0], torch.addcmul, kk - vv, nrm, gp).mul_(2)
                _into(dg[:, s0:e0], torch.mul, err, nrm)
                delta = _project(err * gp, nrm).mul_(rs)
            else:
                delta = 2 * (h - vv)
            for i in range(L - 1, -1, -1):
                nm = names[i]
                ds[nm][:, s0:e0] = delta
                if i > 0:
                    back = self._read(delta, mats[nm], moms[nm], p[nm], xs[nm], ds[nm], transposed=True,
                                      base=base.get(nm), comb=combs[nm])
                    da[i - 1][:, s0:e0] = back
                    delta = self.act.backward(back, pre[i - 1][:, s0:e0])
        saved["gains_at"] = gains_at
        saved["k_reads"] = _StartReads(k_reads.w if beta is not None else None,
                                       k_reads.s if gamma is not None else None, None)
        # Retrieval of the whole block in the dual form.
        full = self._full(beta, gamma, mix)
        h = q
        ret_pre: list[Tensor] = []
        for i, nm in enumerate(names):
            z = self._read(h, mats[nm], moms[nm], full[nm], xs[nm], ds[nm], base=base.get(nm))
            if i < L - 1:
                ret_pre.append(z)
                h = self.act.forward(z)
            else:
                h = z
        saved["ret_pre"] = ret_pre
        if gain is not None:
            nrm, rs = _layer_norm(h)
            g_t = self._gain_at(weights[gain], momentum.get(gain) if self.has_momentum else None,
                                full[gain], saved["dg"], base.get(gain))
            saved["ret_norm"], saved["ret_rstd"] = nrm, rs
            y = q + nrm * g_t
        else:
            y = h
        return y, saved

    def _point(
        self, beta: Tensor | None, gamma: Tensor | None, mix: dict[str, Tensor], s0: int
    ) -> dict[str, _Point]:
        """The gradient point of the chunk starting at token ``s0``: the weights after token
        ``s0 - 1`` (the block's start weights for the first chunk)."""
        if s0 == 0:
            start = _Point(None, None, None, 0)
            return dict.fromkeys(mix, start)
        b = None if beta is None else beta[:, s0 - 1 : s0, None]
        c = None if gamma is None else gamma[:, s0 - 1 : s0, None]
        out: dict[str, _Point] = {}
        by_rate: dict[int, _Point] = {}  # matrices that share a learning rate share its point
        for nm, a in mix.items():
            pt = by_rate.get(id(a))
            if pt is None:
                pt = by_rate[id(a)] = _Point(b, c, a[:, s0 - 1 : s0, :s0], s0)
            out[nm] = pt
        return out

    def _later_points(self, beta: Tensor | None, gamma: Tensor | None, a: Tensor | None, m: int) -> _Point:
        """The points of a block's chunks after the first (:func:`_points_at`) as one
        :class:`_Point` with a row per chunk; ``a``: the mixing coefficients whose rows they take
        (``None``: the start terms only)."""
        at = _points_at(m, self.chunk)
        return _Point(None if beta is None else beta[:, at, None], None if gamma is None else gamma[:, at, None],
                      None if a is None else a[:, at], m if a is not None else 0)

    def _full(self, beta: Tensor | None, gamma: Tensor | None, mix: dict[str, Tensor]) -> dict[str, _Point]:
        """Every token's own weights (after its write): the retrieval's points."""
        b = None if beta is None else beta[..., None]
        c = None if gamma is None else gamma[..., None]
        return {nm: _Point(b, c, a, a.shape[-1]) for nm, a in mix.items()}

    @staticmethod
    def _gain_at(g: Tensor, sg: Tensor | None, p: _Point, dg: Tensor, base: Tensor | None = None) -> Tensor:
        """The LayerNorm gain at point ``p``: ``(N, rows, dim)`` (plus ``base``, ``W_0``'s gain,
        when the weights are displacements from it)."""
        out = g.unsqueeze(1) if p.b is None else p.b * g.unsqueeze(1)
        if base is not None:
            out = out + base
        if sg is not None and p.c is not None:
            out = out + p.c * sg.unsqueeze(1)
        if p.a is not None:
            out = out - p.a @ dg[:, : p.s]
        return out

    def ends(self, parts: dict[str, Any], saved: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The weights and momentum after the block's last token (eqs. 13-14 in closed form)."""
        beta, gamma, mix = parts["beta"], parts["gamma"], parts["mix"]
        weights, momentum = parts["weights"], parts["momentum"]
        decay, mmix = parts["decay"], parts["mmix"]
        xs, ds = saved["xs"], saved["ds"]
        new_w: dict[str, Tensor] = {}
        new_m: dict[str, Tensor] = {}
        for nm in weights:
            w = weights[nm]
            s = momentum.get(nm) if self.has_momentum else None
            out = w * _bcast(beta[:, -1], w) if beta is not None else w.clone(memory_format=torch.contiguous_format)
            if s is not None:
                out = out.addcmul_(s, _bcast(gamma[:, -1], s))  # out is a new tensor
            a = mix[nm][:, -1]  # (N, M)
            if nm == self.spec.gain:
                new_w[nm] = out - (a.unsqueeze(1) @ saved["dg"]).squeeze(1)
                if s is not None:
                    new_m[nm] = s * _bcast(decay, s) - (mmix[nm].unsqueeze(1) @ saved["dg"]).squeeze(1)
                continue
            new_w[nm] = out.baddbmm_(ds[nm].mT, a.unsqueeze(-1) * xs[nm], alpha=-1)  # out is a new tensor
            if s is not None:
                new_m[nm] = (s * _bcast(decay, s)).baddbmm_(ds[nm].mT, mmix[nm].unsqueeze(-1) * xs[nm], alpha=-1)
        return new_w, new_m

    # --------------------------------------------------------------------------- backward
    def backward(
        self,
        inputs: dict[str, Any],
        saved: dict[str, Any],
        g_y: Tensor | None,
        g_w: dict[str, Tensor | None],
        g_s: dict[str, Tensor | None],
    ) -> dict[str, Any]:
        """Gradients of every input of the block (flat tensors; ``None`` where there is none)."""
        spec = self.spec
        names, L = spec.matrices, len(spec.matrices)
        gain = spec.gain
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        beta, gamma, mix = inputs["beta"], inputs["gamma"], inputs["mix"]
        weights, momentum = inputs["weights"], inputs["momentum"]
        base = inputs["base"]
        m = k.shape[1]
        mats = {nm: weights[nm] for nm in names}
        moms = {nm: momentum[nm] for nm in names} if self.has_momentum else {nm: None for nm in names}
        xs, ds = saved["xs"], saved["ds"]
        # Row factors of every read: the retrievals (rows 0..M), the key paths (M..2M) and, for
        # every matrix after the first, the inner backward's transposed reads (2M..3M).
        acc: dict[str, Any] = {
            "rows": {
                nm: _Rows(k, mats[nm], (3 if i > 0 else 2) * m, self.has_momentum, nm in base,
                          plain=i > 0 and self.has_momentum)
                for i, nm in enumerate(names)
            },
            "gx": {nm: torch.zeros_like(xs[nm]) for nm in names},
            "gd": {nm: torch.zeros_like(ds[nm]) for nm in names},
            "base": {nm: b for nm, b in base.items() if nm in names},
            "gbase": {nm: torch.zeros_like(b) for nm, b in base.items() if nm not in names},
        }
        g_beta = None if beta is None else torch.zeros_like(beta)
        g_gamma = None if gamma is None else torch.zeros_like(gamma)
        g_mix = {nm: torch.zeros_like(a) for nm, a in mix.items()}
        g_vec: dict[str, Tensor] = {}
        g_vec_mom: dict[str, Tensor] = {}
        g_dg = torch.zeros_like(saved["dg"]) if gain is not None else None
        g_q = torch.zeros_like(q) if g_y is not None else None
        g_k = torch.zeros_like(k)
        g_v = torch.zeros_like(v)

        # --- block-end weights and momentum: W' = bL W + cL S - sum_i a_i d_i x_i^T, S' = E S - ...
        gain_base_w = gain_base_s = None  # the gain's gradients arriving from after the block
        b_last = None if beta is None else beta[:, -1]
        c_last = None if gamma is None else gamma[:, -1]
        decay, mmix = inputs["decay"], inputs["mmix"]
        g_decay = None if decay is None else torch.zeros_like(decay)
        g_mmix = {nm: torch.zeros_like(c) for nm, c in mmix.items()}
        every = list(names) + ([gain] if gain is not None else [])
        for nm in every:
            gw, gs = g_w.get(nm), g_s.get(nm)
            w, s = weights[nm], momentum.get(nm) if self.has_momentum else None
            if nm == gain:
                if gw is not None:
                    gain_base_w = gw if b_last is None else gw * _bcast(b_last, gw)
                if gw is not None and s is not None and c_last is not None:
                    gain_base_s = gw * _bcast(c_last, gw)
                if gs is not None and s is not None:
                    gain_base_s = _plus(gain_base_s, gs * _bcast(decay, gs))
            else:
                acc["rows"][nm].set_bases(gw, b_last, c_last if s is not None else None,
                                          gs if s is not None else None, decay)
            if gw is not None:
                if b_last is not None:
                    g_beta[:, -1] += dot_last(gw, w, gw.ndim - 1)
                if s is not None and c_last is not None:
                    g_gamma[:, -1] += dot_last(gw, s, gw.ndim - 1)
            if gs is not None and s is not None:
                g_decay += dot_last(gs, s, gs.ndim - 1)
            a_row = mix[nm][:, -1]  # (N, M)
            pairs = []
            if gw is not None:
                pairs.append((gw, a_row, g_mix[nm][:, -1]))
            if gs is not None and s is not None:
                pairs.append((gs, mmix[nm], g_mmix[nm]))
            for gm, coef, gcoef in pairs:
                if nm == gain:
                    # vector: out -= sum_i coef_i dg_i
                    g_dg -= coef[..., None] * gm[:, None, :]
                    gcoef -= (saved["dg"] * gm[:, None, :]).sum(-1)
                else:
                    px = xs[nm] @ gm.mT  # (N, M, out)
                    acc["gd"][nm] -= coef[..., None] * px
                    gcoef -= (px * ds[nm]).sum(-1)
                    acc["gx"][nm] -= coef[..., None] * (ds[nm] @ gm)

        # --- retrieval
        full = self._full(beta, gamma, mix)
        if g_y is not None:
            g_h = g_y
            if gain is not None:
                nrm, rs = saved["ret_norm"], saved["ret_rstd"]
                g_t = self._gain_at(weights[gain], momentum.get(gain) if self.has_momentum else None,
                                    full[gain], saved["dg"], base.get(gain))
                g_q += g_y
                g_gt = g_y * nrm  # (N, M, D)
                g_n = g_y * g_t
                g_h = rs * _project(g_n, nrm)
                self._gain_back(g_gt, weights[gain], momentum.get(gain) if self.has_momentum else None,
                                full[gain], saved["dg"], g_dg, g_beta, g_gamma, g_mix[gain], g_vec, g_vec_mom,
                                gain, at=slice(None), g_base=acc["gbase"])
            ret_in = [q] + [self.act.forward(z) for z in saved["ret_pre"]]
            for i in range(L - 1, -1, -1):
                nm = names[i]
                gx, gb, gc, ga = self._read_back(g_h, ret_in[i], nm, mats[nm], moms[nm], full[nm], xs[nm], ds[nm],
                                                 acc, transposed=False, row0=0)
                if gb is not None:
                    g_beta += gb[..., 0]
                if gc is not None:
                    g_gamma += gc[..., 0]
                if ga is not None:
                    g_mix[nm] += ga
                if i > 0:
                    g_h = self.act.backward(gx, saved["ret_pre"][i - 1])
                else:
                    g_q += gx

        # --- key paths, last chunk first
        # (the first layer's reads of the start weights, kept by the forward pass: their b/c
        # gradients need x W^T and x S^T; the keys' gradient through them is taken for the
        # whole block after the loop)
        first = names[0]
        k_reads = saved["k_reads"]
        starts = list(range(0, m, self.chunk))
        combined: set[str] = set()  # matrices whose chunk points (s0 > 0) were read via _combined
        if gain is not None:
            # The gain's gradient at each chunk point, one row per chunk, taken back through the
            # point's coefficients for the whole block after the loop; the rows of the gain factors
            # ``dg`` of a chunk take theirs from the later chunks' points when the chunk comes
            # (``a`` of chunk j's point: row ``j chunk - 1`` of the mixing coefficients).
            g_points = k.new_zeros(k.shape[0], len(starts), k.shape[-1])
            points = self._later_points(beta, gamma, mix[gain], m)  # a: (N, chunks - 1, M)
        for j in range(len(starts) - 1, -1, -1):
            s0 = starts[j]
            e0 = min(s0 + self.chunk, m)
            p = self._point(beta, gamma, mix, s0)
            sl = slice(s0, e0)
            combs = {nm: self._combined(mats[nm], moms[nm], p[nm], base.get(nm)) for nm in names[1:]}
            combined.update(nm for nm, comb in combs.items() if comb is not None and s0 > 0)
            # gradients arriving at this chunk's factors
            g_delta = {nm: acc["gd"][nm][:, sl] for nm in names}
            g_xin = {nm: acc["gx"][nm][:, sl] for nm in names}
            pres = [saved["pre"][i][:, sl] for i in range(L - 1)]
            # inner backward: delta_{i-1} = read_t_i(delta_i) * s'(z_{i-1}), i = L-1 .. 1
            g_z: list[Tensor | None] = [None] * L  # gradients of the key path's pre-activations
            gd_running = g_delta[names[0]]
            for i in range(1, L):
                nm = names[i]
                # delta_{i-1} (gradient gd_running) = back * s'(z_{i-1})
                back = saved["da"][i - 1][:, sl]
                g_back = self.act.backward(gd_running, pres[i - 1])
                if self.act.second is not None:
                    g_z[i - 1] = gd_running * back * self.act.second(pres[i - 1])
                gx, gb, gc, ga = self._read_back(
                    g_back, ds[nm][:, sl], nm, mats[nm], moms[nm], p[nm], xs[nm], ds[nm], acc, transposed=True,
                    row0=2 * m + s0, comb=combs[nm],
                )
                self._point_grads(p[nm], s0, gb, gc, ga, g_beta, g_gamma, g_mix[nm])
                gd_running = g_delta[nm] + gx
            # head: delta_L from the error
            last_nm = names[-1]
            if gain is not None:
                nrm = saved["norm"][:, sl]
                rs = saved["rstd"][:, sl]
                gp = saved["gains_at"][j]
                err = saved["err"][:, sl]
                dn = err * gp
                g_dgv = g_dg[:, sl]
                if j + 1 < len(starts):  # the later chunks' points read these rows' dg
                    g_dgv = torch.baddbmm(g_dgv, points.a[:, j:, sl].mT, g_points[:, j + 1 :], alpha=-1)
                g_dn = rs * _project(gd_running, nrm)
                delta = ds[last_nm][:, sl]
                g_n = -rs * (gd_running * (dn * nrm).mean(-1, keepdim=True)
                             + dn * (gd_running * nrm).mean(-1, keepdim=True))
                g_rs = (gd_running * delta).sum(-1, keepdim=True) / rs
                g_err = g_dn * gp + g_dgv * nrm
                g_n = g_n + g_dgv * err + 2 * g_err * gp
                _into(g_points[:, j], torch.sum, g_dn * err + 2 * g_err * nrm, 1)
                g_k[:, sl].add_(g_err, alpha=2)
                g_v[:, sl].sub_(g_err, alpha=2)
                d = nrm.shape[-1]
                g_zl = rs * _project(g_n, nrm) - g_rs * rs * rs * nrm / d
            else:
                g_zl = 2 * gd_running
                g_v[:, sl] -= 2 * gd_running
            # forward reads, last layer first
            g_cur = g_zl
            for i in range(L - 1, -1, -1):
                nm = names[i]
                x_in = xs[nm][:, sl]
                gx, gb, gc, ga = self._read_back(g_cur, x_in, nm, mats[nm], moms[nm], p[nm], xs[nm], ds[nm],
                                                 acc, transposed=False, row0=m + s0,
                                                 pre=k_reads.rows(sl) if i == 0 else None,
                                                 comb=combs.get(nm))
                self._point_grads(p[nm], s0, gb, gc, ga, g_beta, g_gamma, g_mix[nm])
                gx = g_xin[nm] if gx is None else gx + g_xin[nm]
                if i > 0:
                    g_cur = self.act.backward(gx, pres[i - 1])
                    if g_z[i - 1] is not None:
                        g_cur = g_cur + g_z[i - 1]
                else:
                    g_k[:, sl] += gx

        if gain is not None:
            # the gain at the chunk points, for the whole block: chunk 0's point is the block's start
            s_gain = momentum.get(gain) if self.has_momentum else None
            self._gain_back(g_points[:, :1], weights[gain], s_gain, _Point(None, None, None, 0), saved["dg"], g_dg,
                            g_beta, g_gamma, g_mix[gain], g_vec, g_vec_mom, gain, at=slice(0, 0),
                            g_base=acc["gbase"])
            if len(starts) > 1:
                self._gain_back(g_points[:, 1:], weights[gain], s_gain, points, saved["dg"], g_dg,
                                g_beta, g_gamma, g_mix[gain], g_vec, g_vec_mom, gain, at=_points_at(m, self.chunk),
                                g_base=acc["gbase"], dg_too=False)
        # the keys' gradient through the first layer's start weights, for the whole block
        g_k += acc["rows"][first].through(slice(m, 2 * m), mats[first], moms[first], base.get(first))
        # the coefficient gradients of the reads that went through a combined matrix
        for nm in combined:
            self._combined_point_grads(acc["rows"][nm], mats[nm], moms[nm], m, self.chunk, g_beta, g_gamma)

        # --- full-size weight and momentum gradients, one product each
        out_w: dict[str, Tensor | None] = {}
        out_s: dict[str, Tensor | None] = {}
        for nm in names:
            out_w[nm], out_s[nm], d_base = acc["rows"][nm].gradients()
            if d_base is not None:
                acc["gbase"][nm] = d_base
        if gain is not None:
            out_w[gain] = _plus(gain_base_w, g_vec.get(gain))
            if self.has_momentum:
                out_s[gain] = _plus(gain_base_s, g_vec_mom.get(gain))
        return {
            "q": g_q, "k": g_k, "v": g_v, "beta": g_beta, "gamma": g_gamma, "mix": g_mix,
            "decay": g_decay, "mmix": g_mmix, "weights": out_w, "momentum": out_s, "base": acc["gbase"],
        }

    @staticmethod
    def _combined_point_grads(
        rows: _Rows, w: Tensor, s: Tensor | None, m: int, chunk: int,
        g_beta: Tensor | None, g_gamma: Tensor | None,
    ) -> None:
        """The gradients of the chunk points' ``b`` and ``c`` (every chunk after the first) from
        the key path's reads of a later matrix that went through :meth:`_combined` (its forward
        reads at rows ``m + t``, its transposed reads at ``2 m + t``): ``sum (g W) . x`` (``S``
        for ``c``) over each chunk's rows of both, one product per matrix and coefficient for
        the block instead of one per read. Chunk ``j``'s point is the weights after token
        ``j chunk - 1``."""
        if m <= chunk:  # one chunk: its point is the block's start, no coefficients
            return
        for g_coef, mat in ((g_beta, w), (g_gamma, s)):
            if g_coef is None or mat is None:
                continue
            dots = rows.coefficient_dots(slice(m, 3 * m), mat)  # (N, 2m)
            later = (dots[:, chunk:m] + dots[:, m + chunk :])  # the tokens of chunks 1, 2, ...
            later = torch.nn.functional.pad(later, (0, -later.shape[1] % chunk))  # a partial last chunk
            g_coef[:, _points_at(m, chunk)] += later.view(later.shape[0], -1, chunk).sum(-1)

    @staticmethod
    def _point_grads(
        p: _Point, s0: int, gb: Tensor | None, gc: Tensor | None, ga: Tensor | None,
        g_beta: Tensor | None, g_gamma: Tensor | None, g_mix: Tensor,
    ) -> None:
        """Adds a chunk point's coefficient gradients (summed over its rows) where they belong."""
        if s0 == 0:
            return
        if gb is not None and g_beta is not None:
            g_beta[:, s0 - 1].add_(gb.sum((1, 2)))
        if gc is not None and g_gamma is not None:
            g_gamma[:, s0 - 1].add_(gc.sum((1, 2)))
        if ga is not None:
            g_mix[:, s0 - 1, :s0].add_(ga.sum(1))

    def _gain_back(
        self, g_out: Tensor, g: Tensor, sg: Tensor | None, p: _Point, dg: Tensor, g_dg: Tensor,
        g_beta: Tensor | None, g_gamma: Tensor | None, g_mix: Tensor,
        g_vec: dict[str, Tensor], g_vec_mom: dict[str, Tensor], name: str, *, at: slice,
        g_base: dict[str, Tensor], dg_too: bool = True,
    ) -> None:
        """Backward of ``gain_at`` (``g_out``: ``(N, rows, dim)``, the gains at the points ``p``,
        which are the coefficients' rows ``at``). ``dg_too``: also the gradient of the gain
        factors ``dg`` (else the caller has taken it)."""
        if name in g_base:
            g_base[name] += g_out.sum((0, 1))
        if p.b is None:
            gg = g_out.sum(1)
        else:
            gg = (g_out * p.b).sum(1)
            g_beta[:, at] += (g_out * g.unsqueeze(1)).sum(-1)  # (N, rows)
        g_vec[name] = _plus(g_vec.get(name), gg)
        if sg is not None and p.c is not None:
            gs = (g_out * p.c).sum(1)
            g_vec_mom[name] = _plus(g_vec_mom.get(name), gs)
            g_gamma[:, at] += (g_out * sg.unsqueeze(1)).sum(-1)
        if p.a is not None:
            g_mix[:, at, : p.s] -= torch.bmm(g_out, dg[:, : p.s].mT)  # (N, rows, s)
            if dg_too:
                g_dg[:, : p.s] -= torch.bmm(p.a.mT, g_out)


def _plus(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a + b`` where a missing term (``None``) counts as zero."""
    if a is None:
        return b
    return a if b is None else a + b


def _bcast(c: Tensor, like: Tensor) -> Tensor:
    return c.reshape(c.shape[0], *([1] * (like.ndim - 1)))


class _Fused(torch.autograd.Function):
    """The block as one autograd node (inputs: a flat list of tensors, see :func:`fused_block`)."""

    @staticmethod
    def forward(ctx: Any, block: _Block, layout: _Layout, keep: bool, reference: Callable[..., tuple[Tensor, ...]],
                *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.block, ctx.layout, ctx.reference = block, layout, reference
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors)
        parts = layout.unpack(tensors)
        y, saved = block.run(parts)
        new_w, new_m = block.ends(parts, saved)
        ctx.saved = saved if keep else None
        return layout.pack_outputs(y, new_w, new_m)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        tensors = ctx.saved_tensors
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # (torch.compile does not record a backward pass for a second derivative, and its
            # tracing of this function must not take the general path below.)
            # A recorded backward: differentiate the general path on the same inputs, so that
            # the gradients stay connected to the graph that produced those inputs.
            # Aliases: a gradient with respect to an input must count only its direct uses here,
            # not the paths through another input that depends on it (W_0 reaches the block both
            # as the forgetting's target and through the displaced start weights).
            inputs = [t.view_as(t) if t.requires_grad else t for t in tensors]
            with torch.enable_grad():
                outs = ctx.reference(*inputs)
            result, _ = input_gradients(outs, grads, inputs, create_graph=True)
            return (None, None, None, None, *result)
        block, layout = ctx.block, ctx.layout
        parts = layout.unpack(tensors)
        saved = ctx.saved
        if saved is None:
            _, saved = block.run(parts)
        ctx.saved = None
        g_y, g_w, g_s = layout.unpack_output_grads(grads)
        got = block.backward(parts, saved, g_y, g_w, g_s)
        return (None, None, None, None, *layout.pack_input_grads(got, tensors))


class _Layout:
    """Where each input of the block sits in the flat tensor list, and the shapes to restore."""

    def __init__(self, names: list[str], lr_keys: dict[str, str], coef: ChunkCoefficients,
                 has_momentum: bool, lead: tuple[int, int], has_base: bool) -> None:
        self.names, self.lr_keys, self.has_momentum, self.lead = names, lr_keys, has_momentum, lead
        self.has_base = has_base
        self.has_beta = coef.beta is not None
        self.keys = list(coef.mix)

    def pack_inputs(self, q: Tensor, k: Tensor, v: Tensor, coef: ChunkCoefficients,
                    weights: dict[str, Tensor], momentum: dict[str, Tensor],
                    base: dict[str, Tensor] | None) -> list[Tensor]:
        out = [q, k, v]
        if self.has_beta:
            out.append(coef.beta)
        if self.has_momentum:
            out.append(coef.gamma)
        out += [coef.mix[key] for key in self.keys]
        if self.has_momentum:
            out.append(coef.momentum_decay)
            out += [coef.momentum_mix[key] for key in self.keys]
        out += [weights[n] for n in self.names]
        if self.has_momentum:
            out += [momentum[n] for n in self.names]
        if base is not None:
            out += [base[n] for n in self.names]
        return out

    def structured(self, tensors: tuple[Tensor, ...] | list[Tensor]) -> dict[str, Any]:
        it = iter(tensors)
        out: dict[str, Any] = {"q": next(it), "k": next(it), "v": next(it)}
        out["beta"] = next(it) if self.has_beta else None
        out["gamma"] = next(it) if self.has_momentum else None
        out["mix"] = {key: next(it) for key in self.keys}
        out["decay"] = next(it) if self.has_momentum else None
        out["mmix"] = {key: next(it) for key in self.keys} if self.has_momentum else {}
        out["weights"] = {n: next(it) for n in self.names}
        out["momentum"] = {n: next(it) for n in self.names} if self.has_momentum else {}
        out["base"] = {n: next(it) for n in self.names} if self.has_base else {}
        return out

    def unpack(self, tensors: tuple[Tensor, ...]) -> dict[str, Any]:
        """Flat ``(N, ...)`` views, with the mixing coefficients per fast-weight name."""
        st = self.structured(tensors)
        mix = {key: _flat(a, 2) for key, a in st["mix"].items()}  # one view per rate: names that share it share it
        flat: dict[str, Any] = {
            "q": _flat(st["q"], 2), "k": _flat(st["k"], 2), "v": _flat(st["v"], 2),
            "beta": _flat(st["beta"], 1), "gamma": _flat(st["gamma"], 1),
            "mix": {n: mix[self.lr_keys[n]] for n in self.names},
            "decay": None if st["decay"] is None else st["decay"].reshape(-1),
            "mmix": {n: _flat(st["mmix"][self.lr_keys[n]], 1) for n in self.names} if self.has_momentum else {},
        }
        flat["weights"] = {n: _flat(w, w.ndim - 2) for n, w in st["weights"].items()}
        flat["momentum"] = {n: _flat(s, s.ndim - 2) for n, s in st["momentum"].items()}
        flat["base"] = st["base"]  # W_0: parameter shapes, shared by every row
        return flat

    def pack_outputs(self, y: Tensor, new_w: dict[str, Tensor], new_m: dict[str, Tensor]) -> tuple[Tensor, ...]:
        outs = [y.reshape(*self.lead, *y.shape[1:])]
        outs += [new_w[n].reshape(*self.lead, *new_w[n].shape[1:]) for n in self.names]
        if self.has_momentum:
            outs += [new_m[n].reshape(*self.lead, *new_m[n].shape[1:]) for n in self.names]
        return tuple(outs)

    def unpack_output_grads(self, grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, dict, dict]:
        def flat(g: Tensor | None) -> Tensor | None:
            return None if g is None else g.reshape(-1, *g.shape[2:])

        it = iter(grads)
        g_y = flat(next(it))
        g_w = {n: flat(next(it)) for n in self.names}
        g_s = {n: flat(next(it)) for n in self.names} if self.has_momentum else {}
        return g_y, g_w, g_s

    def pack_input_grads(self, got: dict[str, Any], tensors: tuple[Tensor, ...]) -> list[Tensor | None]:
        st = self.structured(tensors)

        def back(g: Tensor | None, like: Tensor | None) -> Tensor | None:
            if g is None or like is None or not like.requires_grad:
                return None
            return g.reshape(like.shape)  # (N, ...) -> (batch, heads, ...); an expanded input sums it

        mix_by_key: dict[str, Tensor] = {}
        mmix_by_key: dict[str, Tensor] = {}
        for n in self.names:
            key = self.lr_keys[n]
            g = got["mix"][n]
            mix_by_key[key] = g if key not in mix_by_key else mix_by_key[key] + g
            if self.has_momentum:
                g = got["mmix"][n]
                mmix_by_key[key] = g if key not in mmix_by_key else mmix_by_key[key] + g
        out = [back(got["q"], st["q"]), back(got["k"], st["k"]), back(got["v"], st["v"])]
        if self.has_beta:
            out.append(back(got["beta"], st["beta"]))
        if self.has_momentum:
            out.append(back(got["gamma"], st["gamma"]))
        out += [back(mix_by_key.get(key), st["mix"][key]) for key in self.keys]
        if self.has_momentum:
            out.append(back(got["decay"], st["decay"]))
            out += [back(mmix_by_key.get(key), st["mmix"][key]) for key in self.keys]
        out += [back(got["weights"][n], st["weights"][n]) for n in self.names]
        if self.has_momentum:
            out += [back(got["momentum"][n], st["momentum"][n]) for n in self.names]
        if self.has_base:
            out += [back(got["base"][n], st["base"][n]) for n in self.names]
        return out


def fused_block(
    spec: FusedSpec,
    lr_keys: dict[str, str],
    chunk: int,
    weights: dict[str, Tensor],
    momentum: dict[str, Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    coef: ChunkCoefficients,
    *,
    keep: bool,
    reference: Callable[..., tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]],
    base: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """One block that starts and ends at chunk boundaries, computed by hand (see the module notes).

    Args:
        spec: the memory's :class:`FusedSpec`.
        lr_keys: fast-weight name -> key of its learning rate in ``coef.mix``.
        chunk: tokens per chunk.
        weights, momentum: at the block's start (leading ``(batch, heads)``).
        q, k, v: ``(batch, heads, M, dim)``.
        coef: the block's :class:`ChunkCoefficients` over its ``M`` tokens.
        keep: keep the forward's intermediates for the backward pass (else it runs the forward
            again first).
        reference: ``(q, k, v, coef, weights, momentum, base) -> (y, weights, momentum)`` by the
            general path: differentiated instead when the backward pass is recorded.
        base: ``W_0`` (parameter shapes) when ``weights`` and the results are displacements
            from it (forgetting towards ``W_0``, :mod:`memory_blocks.functional.memorize_op.anchored`).

    Returns:
        The retrievals ``(batch, heads, M, dim)`` and the weights and momentum after the block.
    """
    names = list(weights)
    has_momentum = coef.gamma is not None
    layout = _Layout(names, lr_keys, coef, has_momentum, (k.shape[0], k.shape[1]), base is not None)
    block = _Block(spec, lr_keys, chunk, has_momentum)
    tensors = layout.pack_inputs(q, k, v, coef, weights, momentum, base)

    def ref(*ts: Tensor) -> tuple[Tensor, ...]:
        st = layout.structured(ts)
        c = ChunkCoefficients(st["beta"], st["gamma"], st["mix"], st["decay"], st["mmix"])
        y, w, mo = reference(st["q"], st["k"], st["v"], c, st["weights"],
                             st["momentum"] if has_momentum else momentum, st["base"] or None)
        return layout.pack_outputs(y.flatten(0, 1), {n: t.flatten(0, 1) for n, t in w.items()},
                                   {n: t.flatten(0, 1) for n, t in mo.items()})

    outs = _Fused.apply(block, layout, keep, ref, *tensors)
    y = outs[0]
    new_w = dict(zip(names, outs[1 : 1 + len(names)]))
    new_m = dict(zip(names, outs[1 + len(names) :])) if has_momentum else dict(momentum)
    return y, new_w, new_m
