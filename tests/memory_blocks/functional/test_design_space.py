"""The design-space rules (MIRAS retention, ATLAS' Omega rule and Muon): the parallel form
equals the token loop ``memorize_naive``, in one call and in streamed pieces, gradients included;
each rule's limits reduce to the rule it extends; the pieces against independent formulas."""

from __future__ import annotations

import inspect
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import (
    ElasticNet,
    KLRetention,
    L2Decay,
    LqNormalization,
    Retention,
    memorize,
    memorize_naive,
)
from memory_blocks.functional.memorize_op import chunk as chunk_module
from memory_blocks.functional.memorize_op.extended_chunk import window_matrix
from memory_blocks.functional.readout_expansion import MaterialisedExpansion
from memory_blocks.functional.memorize_op.newton_schulz import (
    NEWTON_SCHULZ_COEFFICIENTS,
    newton_schulz,
    orthogonal_step,
)

from .cases import assert_close, assert_states_close, make_inputs, make_memory

RETENTIONS = {
    "none": None,
    "lq": LqNormalization(q=4.0),
    "kl": KLRetention(),
    "elastic": ElasticNet(threshold=0.05),
    # the per-chunk readout (expanded at each chunk's start): the dual-form path for built-in
    # memories (plain rule), the per-token-weights path otherwise
    "lq_chunk": LqNormalization(q=4.0, per_chunk=True),
    "kl_chunk": KLRetention(per_chunk=True),
    "elastic_chunk": ElasticNet(threshold=0.05, per_chunk=True),
}
# (omega_window, weighted, newton_schulz_steps)
RULES = {
    "plain": (1, False, 0),
    "omega3": (3, True, 0),
    "weights1": (1, True, 0),
    "muon": (1, False, 5),
    "omega2_muon": (2, False, 3),
}


def _kwargs(rule: str, retention: str, omega: torch.Tensor | None, forget: str, chunk: int) -> dict:
    window, weighted, steps = RULES[rule]
    return dict(
        chunk_size=chunk, forget_target=forget, retention=RETENTIONS[retention], omega_window=window,
        omega_weights=omega if weighted else None, newton_schulz_steps=steps,
    )


def _omega(seed: int, x) -> torch.Tensor:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed + 7)
    return torch.rand(x.lr.shape, generator=g, dtype=torch.float64)


def _grads(y: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    return list(torch.autograd.grad((y * weight).sum(), params))


def _assert_matches(y, state, y_n, s_n, params, g_n) -> None:  # noqa: ANN001
    """Outputs, state and the gradients of ``params`` equal the token loop's."""
    assert_close(y, y_n)
    assert_states_close(state, s_n)
    for a, b in zip(_grads(y, params), g_n):
        assert_close(a, b)


def _in_two_pieces(mem, x, cut: int, kwargs_for):  # noqa: ANN001, ANN202
    """``memorize`` over ``[0, cut)`` then ``[cut, seq)``, carrying the state; ``kwargs_for(s, e)``
    gives each piece's keyword arguments. Returns the joined outputs and the last state."""
    seq = x.q.shape[2]
    cut = min(cut, seq)
    ys, state = [], None
    for s, e in ((0, cut), (cut, seq)):
        if s < e:
            y, state = memorize(mem, *x.cut(s, e).args(), state=state, **kwargs_for(s, e))
            ys.append(y)
    return torch.cat(ys, dim=2), state


@pytest.mark.parametrize("kind", ["linear_bias", "mlp2", "module"])
@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    seq=st.integers(1, 13),
    chunk=st.integers(1, 5),
    # every pair but (none, plain), the paper's rule (tests/memory_blocks/functional/test_memorize.py)
    combo=st.sampled_from([(r, u) for r in sorted(RETENTIONS) for u in sorted(RULES) if (r, u) != ("none", "plain")]),
    forget=st.sampled_from(["zero", "init"]),
    cut=st.integers(1, 12),
)
def test_parallel_equals_naive_in_pieces_with_gradients(
    kind: str, seed: int, seq: int, chunk: int, combo: tuple[str, str], forget: str, cut: int
) -> None:
    retention, rule = combo
    mem = make_memory(kind, 4, seed)
    params = list(mem.parameters())
    x = make_inputs(seed, 2, 2, seq, 4, lr_scale=0.3)
    omega = _omega(seed, x)
    y_n, s_n = memorize_naive(mem, *x.args(), **_kwargs(rule, retention, omega, forget, chunk))
    g_n = _grads(y_n, params)
    y_p, s_p = memorize(mem, *x.args(), **_kwargs(rule, retention, omega, forget, chunk))
    _assert_matches(y_p, s_p, y_n, s_n, params, g_n)
    # Streaming: two pieces, carrying the state (and its Omega window), equal one call.
    y_s, state = _in_two_pieces(mem, x, cut, lambda s, e: _kwargs(rule, retention, omega[:, :, s:e], forget, chunk))
    _assert_matches(y_s, state, y_n, s_n, params, g_n)
    if RULES[rule][0] > 1:
        for key in ("k", "v", "weight"):
            assert_close(state.window[key], s_n.window[key])


@pytest.mark.parametrize("fn", [memorize, memorize_naive])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), seq=st.integers(1, 12), chunk=st.integers(1, 4))
def test_window_one_and_l2_retention_are_the_paper_rule_exactly(fn, seed: int, seq: int, chunk: int) -> None:  # noqa: ANN001
    """``omega_window=1`` without weights, weights all 1, and :class:`L2Decay` change nothing."""
    mem = make_memory("mlp2", 4, seed)
    x = make_inputs(seed, 1, 2, seq, 4, lr_scale=0.3)
    y0, s0 = fn(mem, *x.args(), chunk_size=chunk, forget_target="init")
    y1, s1 = fn(mem, *x.args(), chunk_size=chunk, forget_target="init", omega_window=1, retention=L2Decay())
    assert torch.equal(y0, y1)
    y2, s2 = fn(mem, *x.args(), chunk_size=chunk, forget_target="init", omega_weights=1.0)
    assert_close(y2, y0, 1e-12)
    assert_states_close(s2, s0, 1e-12)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), seq=st.integers(1, 10))
def test_muon_at_chunk_size_one_is_the_per_token_rule(seed: int, seq: int) -> None:
    """Chunk size 1: ``S_t = eta S_{t-1} - theta g_t(W_{t-1})``, ``W_t = (1 - alpha) W_{t-1} + orth(S_t)``,
    written here with autograd on a linear memory (an independent loop)."""
    mem = make_memory("linear", 4, seed)
    x = make_inputs(seed, 1, 1, seq, 4, lr_scale=0.3)
    y, state = memorize(mem, *x.args(), chunk_size=1, newton_schulz_steps=5)
    w = mem.weight.detach()[None, None].clone()
    s = torch.zeros_like(w)
    for t in range(seq):
        k, v = x.k[0, 0, t], x.v[0, 0, t]
        g = 2 * torch.outer(w[0, 0] @ k - v, k)
        s = x.momentum[0, 0, t] * s - x.lr[0, 0, t] * g
        w = (1 - x.decay[0, 0, t]) * w + orthogonal_step(s, 2, 5)
        assert_close(y[0, 0, t], w[0, 0] @ x.q[0, 0, t])
    assert_close(state.weights["weight"], w)


def test_muon_writes_only_at_chunk_ends() -> None:
    """Inside a chunk a token reads the chunk-start weights (forgotten), the last one the write."""
    mem = make_memory("linear", 4, 3)
    x = make_inputs(3, 1, 1, 8, 4, decay=False, edges=False, lr_scale=0.3)
    y, _ = memorize(mem, *x.args(), chunk_size=4, newton_schulz_steps=5)
    w0 = mem.weight.detach()
    for t in range(3):
        assert_close(y[0, 0, t], w0 @ x.q[0, 0, t], 1e-12)
    assert not torch.allclose(y[0, 0, 3], w0 @ x.q[0, 0, 3])


def test_omega_window_is_the_weighted_sum_of_gradients() -> None:
    """One chunk of a linear memory with gradient descent: ``W = W_0 - theta sum_t G_t``, with
    ``G_t = sum_{window} gamma_i g_i`` written out by hand."""
    mem = make_memory("linear", 3, 1)
    x = make_inputs(1, 1, 1, 5, 3, momentum=False, decay=False, edges=False, lr_scale=0.3)
    gamma = torch.rand(1, 1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, state = memorize(mem, *x.args(), chunk_size=5, omega_window=3, omega_weights=gamma)
    w0 = mem.weight.detach()
    g = [2 * torch.outer(w0 @ x.k[0, 0, i] - x.v[0, 0, i], x.k[0, 0, i]) for i in range(5)]
    w = w0.clone()
    for t in range(5):
        window = sum(gamma[0, 0, i] * g[i] for i in range(max(0, t - 2), t + 1))
        w = w - x.lr[0, 0, t] * window
    assert_close(state.weights["weight"][0, 0], w)


def test_window_matrix_is_a_band_of_weights() -> None:
    weight = torch.arange(1.0, 7.0).reshape(1, 1, 6)  # 2 earlier tokens + 4
    omega = window_matrix(weight, 4, 3)[0, 0]
    for t in range(4):
        for j in range(6):
            expected = weight[0, 0, j] if t <= j <= t + 2 else 0.0
            assert omega[t, j] == expected


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 6), cols=st.integers(1, 6))
def test_newton_schulz_keeps_singular_vectors_and_flattens_the_spectrum(seed: int, rows: int, cols: int) -> None:
    """Against the SVD: ``U^T NS(X) V`` is diagonal with entries near 1 (the quintic iteration
    stops in about [0.7, 1.2]), for full-rank random matrices."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    o = newton_schulz(x, 5)
    inner = u.mT @ o @ vh.mT
    diag = torch.diagonal(inner)
    assert_close(inner - torch.diag(diag), torch.zeros_like(inner), 1e-10)
    # Well-conditioned directions (singular values not tiny) reach the band.
    good = s > 1e-3 * s.max()
    assert ((diag[good] > 0.5) & (diag[good] < 1.3)).all(), diag


def _newton_schulz_as_written(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Muon's iteration on the full matrix, ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``
    (``x`` transposed first when it is tall): the oracle of the Gram-side form."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    wide = x.shape[-2] <= x.shape[-1]
    y = x if wide else x.mT
    y = y / y.square().sum(dim=(-2, -1), keepdim=True).sqrt()
    for _ in range(steps):
        gram = y @ y.mT
        y = a * y + (b * gram + c * (gram @ gram)) @ y
    return y if wide else y.mT


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lead=st.sampled_from([(), (2,), (2, 3)]),
    rows=st.integers(1, 7),
    cols=st.integers(1, 7),
    steps=st.integers(1, 5),
)
def test_newton_schulz_equals_the_iteration_as_written(
    seed: int, lead: tuple[int, ...], rows: int, cols: int, steps: int
) -> None:
    """The Gram-side form (the iteration run on ``M`` with ``X_k = M X_0``) equals the
    iteration on the full matrix in float64, wide, square and tall, with its gradients."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, rows, cols, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*lead, rows, cols, generator=g, dtype=torch.float64)
    ours, ref = newton_schulz(x, steps), _newton_schulz_as_written(x, steps)
    assert_close(ours, ref, 1e-10)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    assert_close(g_ours, g_ref, 1e-8)


def test_orthogonal_step_keeps_the_momentum_size_and_passes_vectors() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    o = orthogonal_step(s, 2, 5)
    assert_close(o.square().sum((-2, -1)).sqrt(), s.square().sum((-2, -1)).sqrt(), 1e-10)
    vec = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    assert torch.equal(orthogonal_step(vec, 1, 5), vec)
    zero = torch.zeros(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    out = orthogonal_step(zero, 2, 5)
    (grad,) = torch.autograd.grad(out.sum(), zero)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(grad).all()


def test_retention_readouts_match_their_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    lq = LqNormalization(q=3.0, eps=1e-6).readout(a, 2)
    norm = (a.abs() ** 3).sum((-2, -1), keepdim=True) + 1e-6
    assert_close(lq, a / norm ** (1 / 3))
    assert torch.equal(LqNormalization(q=2.0).readout(a, 2), a / 1.0)
    kl = KLRetention(scale=2.0).readout(a, 2)
    assert_close(kl, 2.0 * a.exp() / a.exp().sum(-1, keepdim=True))
    assert_close(KLRetention().readout(a, 2).sum(-1), torch.full((2, 3, 4), 5**0.5, dtype=torch.float64))
    en = ElasticNet(threshold=0.3).readout(a, 2)
    expected = torch.where(a > 0.3, a - 0.3, torch.where(a < -0.3, a + 0.3, torch.zeros_like(a)))
    assert_close(en, expected)
    vec = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    for r in (LqNormalization(), KLRetention(), ElasticNet(), L2Decay()):
        assert torch.equal(r.readout(vec, 1), vec)  # vectors keep the identity


CHUNK_READOUTS = {"lq": LqNormalization(q=4.0, per_chunk=True), "lq3": LqNormalization(q=3.0, per_chunk=True),
                  "kl": KLRetention(per_chunk=True), "elastic": ElasticNet(threshold=0.05, per_chunk=True)}
# Readouts that only rescale each matrix keep the dual form per token as well.
DUAL_FORM_READOUTS = {**CHUNK_READOUTS, "lq_token": LqNormalization(q=4.0), "lq3_token": LqNormalization(q=3.0)}


@pytest.mark.parametrize("kind", ["linear_bias", "mlp2", "gated"])
@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    seq=st.integers(1, 13),
    chunk=st.integers(1, 5),
    name=st.sampled_from(sorted(DUAL_FORM_READOUTS)),
    forget=st.sampled_from(["zero", "init"]),
    momentum=st.booleans(),
    cut=st.integers(1, 12),
)
def test_chunk_readout_dual_form_equals_naive(
    kind: str, seed: int, seq: int, chunk: int, name: str, forget: str, momentum: bool, cut: int
) -> None:
    """The per-chunk readout of a built-in memory runs in the dual form (``readout_chunk``, no
    per-token weights) and equals the token loop, which expands ``phi`` with forward-mode
    autograd: in one call and in two streamed pieces, gradients of the inputs, the gates and the
    memory's weights included. So does the per-token ``l_q`` readout (a rescaling: each token's
    dual-form read over its own accumulator's scale), against the loop's ``phi(A_t)``."""
    mem = make_memory(kind, 4, seed)
    x = make_inputs(seed, 2, 2, seq, 4, lr_scale=0.3, momentum=momentum)
    for field in ("q", "k", "v", "lr", "momentum", "decay"):  # gradients of the inputs and gates too
        t = getattr(x, field)
        if t is not None:
            setattr(x, field, t.clone().requires_grad_())
    params = [t for t in x.args() if t is not None] + list(mem.parameters())
    kw = dict(chunk_size=chunk, forget_target=forget, retention=DUAL_FORM_READOUTS[name])
    y_n, s_n = memorize_naive(mem, *x.args(), **kw)
    g_n = _grads(y_n, params)
    with mock.patch.object(chunk_module, "readout_chunk", wraps=chunk_module.readout_chunk) as spy:
        y_p, s_p = memorize(mem, *x.args(), **kw)
    assert spy.called, "the dual-form path was not taken"
    _assert_matches(y_p, s_p, y_n, s_n, params, g_n)
    y_s, state = _in_two_pieces(mem, x, cut, lambda s, e: kw)
    _assert_matches(y_s, state, y_n, s_n, params, g_n)


@pytest.mark.parametrize("fn", [memorize, memorize_naive])
@pytest.mark.parametrize("name", ["lq", "kl", "elastic"])
def test_chunk_readout_is_the_token_readout_at_chunk_size_one_only(fn, name: str) -> None:  # noqa: ANN001
    """At chunk size 1 every token ends its chunk: the per-chunk readout is the per-token rule;
    at chunk size 4 the tokens inside a chunk read the expansion, which differs."""
    mem = make_memory("mlp2", 4, 3)
    x = make_inputs(3, 1, 2, 9, 4, lr_scale=0.5)
    per_token = RETENTIONS[name]
    per_chunk = CHUNK_READOUTS[name]
    y1, s1 = fn(mem, *x.args(), chunk_size=1, retention=per_chunk)
    y0, s0 = fn(mem, *x.args(), chunk_size=1, retention=per_token)
    assert_close(y1, y0)
    assert_states_close(s1, s0)
    y4, s4 = fn(mem, *x.args(), chunk_size=4, retention=per_chunk)
    y4_token, s4_token = fn(mem, *x.args(), chunk_size=4, retention=per_token)
    assert_states_close(s4, s4_token)  # the readout changes what is read, not what is written
    inside = [t for t in range(9) if (t + 1) % 4 != 0]
    ends = [3, 7]
    assert_close(y4[:, :, ends], y4_token[:, :, ends])
    assert (y4[:, :, inside] - y4_token[:, :, inside]).abs().max() > 1e-6


@pytest.mark.parametrize("name", sorted(CHUNK_READOUTS))
def test_expansions_match_the_materialised_derivative(name: str) -> None:
    """Each retention's written-out derivative and contracted dual-form read against forward-mode
    autograd of its readout (:class:`MaterialisedExpansion` over the base class's ``tangent``)."""
    r = CHUNK_READOUTS[name]
    g = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    a, m = rand(2, 3, 5, 4), rand(2, 3, 5, 4)
    reference = torch.func.jvp(lambda z: r.readout(z, 2), (a,), (m,))[1]
    assert_close(r.tangent(a, m, 2), reference, 1e-12)
    assert_close(Retention.tangent(r, a, m, 2), reference, 1e-12)  # the base class's, by autograd
    delta, xs, mix, h = rand(2, 3, 6, 5), rand(2, 3, 6, 4), rand(2, 3, 7, 6), rand(2, 3, 7, 4)
    dense = [(rand(2, 3, 7, 1), rand(2, 3, 5, 4)), (None, rand(2, 3, 5, 4))]
    slow = Retention.expand(r, a)
    assert isinstance(slow, MaterialisedExpansion)
    fast = r.expand(a)
    assert_close(fast.read_point(h), h @ r.readout(a, 2).mT, 1e-12)
    assert_close(fast.read(h, dense, delta, xs, mix), slow.read(h, dense, delta, xs, mix), 1e-12)
    # and the slow reference against a loop over rows that builds each J[M_t] (M_t summed first)
    expected = []
    for t in range(7):
        direction = dense[0][0][..., t, :, None] * dense[0][1] + dense[1][1]
        direction = direction + (mix[..., t, :, None, None] * delta[..., :, :, None] * xs[..., :, None, :]).sum(-3)
        w = r.readout(a, 2) + torch.func.jvp(lambda z: r.readout(z, 2), (a,), (direction,))[1]
        expected.append((w @ h[..., t, :, None]).squeeze(-1))
    assert_close(slow.read(h, dense, delta, xs, mix), torch.stack(expected, dim=-2), 1e-12)
    # A chunk's read (rows = sources, mix lower triangular) skips the pairs above the diagonal.
    tri, rows = mix[..., :6, :].tril(), h[..., :6, :]
    dense6 = [(dense[0][0][..., :6, :], dense[0][1]), dense[1]]
    assert_close(
        fast.read(rows, dense6, delta, xs, tri, causal=True), slow.read(rows, dense6, delta, xs, tri), 1e-12
    )
    with pytest.raises(ValueError, match="causal needs as many rows as sources"):
        fast.read(h, dense, delta, xs, mix, causal=True)


def test_per_chunk_must_be_a_bool() -> None:
    for cls in (LqNormalization, KLRetention, ElasticNet, L2Decay):
        with pytest.raises(TypeError, match="per_chunk"):
            cls(per_chunk="yes")
    assert LqNormalization(4.0).q == 4.0 and not LqNormalization(4.0).per_chunk  # keyword only


def test_design_arguments_are_checked() -> None:
    mem = make_memory("linear", 4, 0)
    x = make_inputs(0, 1, 2, 6, 4)
    # The functions' own checks, without the runtime shape checker's wrapper (which would answer
    # a wrong shape first, with a TypeError).
    for fn in (inspect.unwrap(memorize), inspect.unwrap(memorize_naive)):
        with pytest.raises(ValueError, match="omega_window"):
            fn(mem, *x.args(), chunk_size=2, omega_window=0)
        with pytest.raises(ValueError, match="newton_schulz_steps"):
            fn(mem, *x.args(), chunk_size=2, newton_schulz_steps=-1)
        with pytest.raises(ValueError, match="Muon"):
            fn(mem, x.q, x.k, x.v, x.lr, None, x.decay, chunk_size=2, newton_schulz_steps=5)
        with pytest.raises(ValueError, match="omega_weights"):
            fn(mem, *x.args(), chunk_size=2, omega_weights=-1.0)
        with pytest.raises(ValueError, match="omega_weights"):
            fn(mem, *x.args(), chunk_size=2, omega_weights=torch.ones(1, 2, 5, dtype=torch.float64))
        with pytest.raises(ValueError, match="omega_weights"):
            fn(mem, *x.args(), chunk_size=2, omega_weights=torch.full((1, 2, 6), float("nan"), dtype=torch.float64))
        with pytest.raises(TypeError, match="omega_weights"):
            fn(mem, *x.args(), chunk_size=2, omega_weights="ones")
        with pytest.raises(TypeError, match="retention"):
            fn(mem, *x.args(), chunk_size=2, retention="kl")
        _, state = fn(mem, *x.args(), chunk_size=2, omega_window=3)
        with pytest.raises(ValueError, match="Omega window"):
            fn(mem, *x.args(), chunk_size=2, omega_window=2, state=state)
        with pytest.raises(ValueError, match="Omega window"):
            fn(mem, *x.args(), chunk_size=2, state=state)
