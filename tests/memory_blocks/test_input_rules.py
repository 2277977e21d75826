"""The input rules of issue 15, case by case: each bad input named in the issue gets one clear
error at the entry point; gates given as numbers, states tagged with their chunk size.

Called unwrapped: the test run's runtime type checker would otherwise answer first.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from memory_blocks import (
    ConstantGate,
    GatedMLPMemory,
    Huber,
    LearnedGate,
    MemoryState,
    MLPMemory,
    NeuralMemory,
    SlidingWindowAttention,
    memorize,
    memorize_naive,
    retrieve,
)
from memory_blocks.functional import sliding_window_attention

from .functional.cases import make_memory

_memorize = inspect.unwrap(memorize)
_naive = inspect.unwrap(memorize_naive)
_retrieve = inspect.unwrap(retrieve)
_swa = inspect.unwrap(sliding_window_attention)
_forward = inspect.unwrap(NeuralMemory.forward)


def _inputs(dtype: torch.dtype = torch.float64, seq: int = 5):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, seq, 4, generator=g, dtype=dtype) for _ in range(3))
    return q, k, v


@pytest.mark.parametrize("fn", [_memorize, _naive])
@pytest.mark.parametrize(
    "gates, message",
    [
        (dict(lr=-0.1), r"lr must be finite and >= 0, got a value of -0.1"),
        (dict(momentum=4.5), r"momentum must be in \[0, 1\], got a value of 4.5"),
        (dict(decay=-3.0), r"decay must be in \[0, 1\], got a value of -3.0"),
        (dict(lr=10**400), r"lr must be finite and >= 0, got a value of inf"),
        (dict(lr=math.inf), r"lr must be finite"),
        (dict(lr="fast"), r"lr must be a tensor of shape \(batch, heads, seq\) or a Python number"),
    ],
)
def test_gate_numbers_out_of_range_are_refused(fn, gates, message) -> None:
    mem = make_memory("mlp2", 4, 0)
    q, k, v = _inputs()
    kw = dict(lr=0.1, momentum=0.9, decay=0.01) | gates
    with pytest.raises((ValueError, TypeError), match=message):
        fn(mem, q, k, v, kw["lr"], kw["momentum"], kw["decay"], chunk_size=2)


@pytest.mark.parametrize("name, value", [("lr", -1e-3), ("momentum", 1.0 + 1e-6), ("decay", math.nan)])
def test_one_bad_entry_in_a_gate_tensor_is_named(name: str, value: float) -> None:
    mem = make_memory("linear", 4, 0)
    q, k, v = _inputs()
    gates = {n: torch.full((2, 2, 5), 0.5, dtype=torch.float64) for n in ("lr", "momentum", "decay")}
    gates[name][1, 0, 3] = value
    with pytest.raises(ValueError, match=rf"memorize: {name} "):
        _memorize(mem, q, k, v, gates["lr"], gates["momentum"], gates["decay"], chunk_size=2)


def test_gate_edges_are_accepted() -> None:
    """The ranges are closed: eta = 1, alpha = 1 and theta = 0 are valid gate values."""
    mem = make_memory("mlp2", 4, 0)
    q, k, v = _inputs()
    y, _ = _memorize(mem, q, k, v, 0.0, 1.0, 1.0, chunk_size=2)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("fn", [_memorize, _naive])
def test_numbers_are_the_same_as_full_tensors(fn) -> None:
    mem = make_memory("mlp2", 4, 0)
    q, k, v = _inputs()

    def full(x: float) -> torch.Tensor:
        return torch.full((2, 2, 5), x, dtype=torch.float64)

    y1, s1 = fn(mem, q, k, v, 0.2, 0.9, 0.05, chunk_size=2)
    y2, s2 = fn(mem, q, k, v, full(0.2), full(0.9), full(0.05), chunk_size=2)
    assert torch.equal(y1, y2)
    assert all(torch.equal(s1.weights[n], s2.weights[n]) for n in s1.weights)
    per_tensor = {n: 0.2 for n in mem.initial_weights()}
    y3, _ = fn(mem, q, k, v, per_tensor, 0.9, 0.05, chunk_size=2)
    assert torch.equal(y1, y3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_another_dtype_than_the_memory_is_refused_naming_both(dtype: torch.dtype) -> None:
    mem = make_memory("mlp2", 4, 0)  # float64
    q, k, v = _inputs(dtype)
    with pytest.raises(ValueError, match=rf"memorize: k has dtype {dtype} but the memory model's weights have torch.float64"):
        _memorize(mem, q, k, v, 0.1, chunk_size=2)
    state = mem.init_state(2, 2)
    with pytest.raises(ValueError, match=rf"retrieve: q has dtype {dtype}"):
        _retrieve(mem, state, q)


def test_a_state_of_another_dtype_is_refused() -> None:
    mem = make_memory("linear", 4, 0)
    q, k, v = _inputs()
    _, state = _memorize(mem, q, k, v, 0.1, chunk_size=2)
    single = MemoryState(*(({n: t.float() for n, t in d.items()} if d is not None else None)
                           for d in (state.weights, state.momentum, state.chunk_weights)), state.offset)
    with pytest.raises(ValueError, match=r"state.weights\['weight'\] has dtype torch.float32"):
        _memorize(mem, q, k, v, 0.1, chunk_size=2, state=single)


@pytest.mark.parametrize("fn", [_memorize, _naive])
def test_states_carry_their_chunk_size(fn) -> None:
    mem = make_memory("mlp2", 4, 0)
    q, k, v = _inputs(seq=4)
    _, state = fn(mem, q, k, v, 0.1, chunk_size=4)
    assert state.chunk_size == 4 and state.offset == 0  # at a boundary: the offset cannot tell
    with pytest.raises(ValueError, match="made with chunk_size = 4 but this call has chunk_size = 2"):
        fn(mem, q, k, v, 0.1, chunk_size=2, state=state)
    y, _ = fn(mem, q, k, v, 0.1, chunk_size=4, state=state)
    assert torch.isfinite(y).all()
    # A state built by hand has no tag (unknown) and is accepted wherever it fits.
    untagged = dataclasses.replace(state, chunk_size=None)
    fn(mem, q, k, v, 0.1, chunk_size=2, state=untagged)


def test_memory_state_checks_its_tag() -> None:
    w = {"a": torch.zeros(1, 1, 2)}
    with pytest.raises(ValueError, match=r"offset must lie in \[0, chunk_size=2\), got 2"):
        MemoryState(w, w, w, 2, chunk_size=2)
    with pytest.raises(TypeError, match=r"weights\['a'\] must be a floating-point tensor"):
        MemoryState({"a": torch.zeros(1, 1, 2, dtype=torch.long)}, w)
    assert MemoryState(w, w).chunk_size is None
    assert MemoryState(w, w, chunk_size=3).detach().chunk_size == 3


def test_neural_memory_takes_objective_names() -> None:
    torch.manual_seed(0)
    by_name = NeuralMemory(8, heads=2, chunk_size=2, objective="huber")
    torch.manual_seed(0)
    by_object = NeuralMemory(8, heads=2, chunk_size=2, objective=Huber())
    x = torch.randn(1, 5, 8)
    assert by_name.objective == Huber()
    assert torch.equal(by_name(x)[0], by_object(x)[0])


_init = inspect.unwrap(NeuralMemory.__init__)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(objective="hubber"), ValueError, r"unknown objective 'hubber'; choose one of \['dot_product'"),
        (dict(objective=3), TypeError, "objective must be an Objective"),
        (dict(momentum_gate=2.0), ValueError, r"momentum_gate must lie in \[0, 1\], got 2.0"),
        (dict(decay_gate=5.0), ValueError, r"decay_gate must lie in \[0, 1\], got 5.0"),
        (dict(decay_gate=ConstantGate(1.5, heads=2)), ValueError, r"decay_gate must lie in \[0, 1\]"),
        (dict(momentum_gate=LearnedGate(8, 2, init=0.5, max_value=2.0)), ValueError, "max_value=2.0"),
        (dict(lr_gate=math.nan), ValueError, "lr_gate must be finite and >= 0, got nan"),
        (dict(lr_init=1e-300, lr_max=1e300), ValueError, "too far apart"),
        (dict(decay_gate=0.01, decay_max=0.1), ValueError, "decay_init and decay_max apply to decay_gate='learned' only"),
        (dict(lr_gate=0.5, lr_init=0.1), ValueError, "lr_init and lr_max apply to lr_gate='learned' only"),
        (dict(lr_gate=0.5, lr_max=0.6), ValueError, "lr_init and lr_max apply to lr_gate='learned' only"),
        (dict(decay_max=0.0), ValueError, r"decay_max must lie in \(0, 1\], got 0.0"),
        (dict(decay_max=math.nan), ValueError, r"decay_max must lie in \(0, 1\], got nan"),
        (dict(decay_init=0.5, decay_max=0.1), ValueError, "init must lie strictly between 0 and max_value=0.1"),
        (dict(qk_norm="no"), TypeError, "qk_norm must be True or False, got 'no'"),
        (dict(chunk_size=2.5), ValueError, r"chunk_size must be >= 1 \(an integer\), got 2.5"),
        (dict(optimizer=object()), TypeError, "optimizer must be an InnerOptimizer"),
    ],
)
def test_bad_neural_memory_arguments(kwargs, error, message) -> None:
    layer = NeuralMemory.__new__(NeuralMemory)
    with pytest.raises(error, match=message):
        _init(layer, 8, **({"heads": 2} | kwargs))


def test_neural_memory_inputs_and_states() -> None:
    layer = NeuralMemory(8, heads=2, chunk_size=2)
    with pytest.raises(ValueError, match="NeuralMemory: x has dtype torch.float64 but the layer's parameters have torch.float32"):
        _forward(layer, torch.randn(1, 3, 8, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="x must be a floating-point tensor, got torch.int64"):
        _forward(layer, torch.ones(1, 3, 8, dtype=torch.long), None)
    with pytest.raises(ValueError, match="the batch is empty"):
        _forward(layer, torch.randn(0, 3, 8), None)
    _, state = layer(torch.randn(1, 3, 8))
    other_chunk = NeuralMemory(8, heads=2, chunk_size=4)
    with pytest.raises(ValueError, match="made with chunk_size = 2, the layer has chunk_size = 4"):
        _forward(other_chunk, torch.randn(1, 3, 8), state)
    no_conv = NeuralMemory(8, heads=2, chunk_size=2, conv_kernel=None)
    with pytest.raises(ValueError, match=r"state.conv must be None for this layer"):
        _forward(no_conv, torch.randn(1, 3, 8), state)
    one_head = NeuralMemory(8, heads=1, chunk_size=2, memory=MLPMemory(4), dim_head=4)
    with pytest.raises(ValueError, match="the state is for batch 1 and 2 heads, the input has batch 1 and the layer 1 heads"):
        _forward(one_head, torch.randn(1, 3, 8), state)
    with pytest.raises(TypeError, match="state must be a NeuralMemoryState or None, got dict"):
        _forward(layer, torch.randn(1, 3, 8), {})


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(window=2.5), ValueError, r"window must be >= 1 \(an integer\), got 2.5"),
        (dict(window=True), ValueError, r"window must be >= 1 \(an integer\), got True"),
        (dict(batch=0), ValueError, "batch must be >= 1, got 0"),
        (dict(dim_head=0), ValueError, "dim_head must be >= 1, got 0"),
        (dict(dtype=torch.int64), ValueError, "q must be a floating-point tensor, got torch.int64"),
        (dict(scale=math.nan), ValueError, "scale must be a finite number or None, got nan"),
        (dict(block=1.5), ValueError, r"block must be >= 1 \(an integer\), got 1.5"),
    ],
)
def test_sliding_window_attention_arguments(change, error, message) -> None:
    shape = dict(batch=2, dim_head=4) | {n: change.pop(n) for n in ("batch", "dim_head") if n in change}
    dtype = change.pop("dtype", torch.float32)
    q = (torch.randn(shape["batch"], 2, 5, shape["dim_head"]) * 3).to(dtype)
    kw = dict(window=2) | change
    with pytest.raises(error, match=f"sliding_window_attention: {message}"):
        _swa(q, q, q, **kw)


def test_attention_module_arguments_and_dtypes() -> None:
    init = inspect.unwrap(SlidingWindowAttention.__init__)
    module = SlidingWindowAttention.__new__(SlidingWindowAttention)
    with pytest.raises(ValueError, match=r"window must be >= 1 \(an integer\), got 2.5"):
        init(module, 8, 2, window=2.5)
    with pytest.raises(TypeError, match="rotary must be True or False"):
        init(module, 8, 2, window=2, rotary="yes")
    layer = SlidingWindowAttention(8, 2, window=2)
    forward = inspect.unwrap(SlidingWindowAttention.forward)
    with pytest.raises(ValueError, match="x has dtype torch.float64 but the layer's parameters have torch.float32"):
        forward(layer, torch.randn(1, 3, 8, dtype=torch.float64))
    _, cache = layer(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"cache.prefix_k has dtype torch.float32 but the layer's parameters have torch.float64"):
        forward(layer.double(), torch.randn(1, 1, 8, dtype=torch.float64), cache=cache)


@pytest.mark.parametrize("expansion, message", [(math.inf, "finite"), (1e6, "more than"), ("4", "a number")])
def test_memory_expansion_is_bounded(expansion, message) -> None:
    for cls in (MLPMemory, GatedMLPMemory):
        with pytest.raises(ValueError, match=f"{cls.__name__}: expansion.*{message}"):
            inspect.unwrap(cls.__init__)(cls.__new__(cls), 64, expansion=expansion)
