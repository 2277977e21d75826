"""Fuzz of the memory components' entry points: every call is accepted with a finite result
or refused with one ValueError/TypeError that starts with the entry point's name and names a
bad argument.

Each example draws a call at tiny sizes, some arguments valid and some not, and predicts which
arguments are bad (``faults``: words the error must contain). A call with no fault must be
accepted and give finite outputs; a call with faults must be refused, naming one of them. Any
other exception fails the test. Outcomes are recorded with ``hypothesis.event``
(``pytest --hypothesis-show-statistics`` shows the counts).

The functions are called unwrapped: the test run puts jaxtyping's runtime checker in front of
public functions, and what is fuzzed here is what users get without it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import Tensor

from memory_blocks import (
    LinearMemory,
    MLPMemory,
    NeuralMemory,
    SegmentAttention,
    SlidingWindowAttention,
    memorize,
    memorize_naive,
    retrieve,
)
from memory_blocks.functional import segment_attention, sliding_window_attention

_memorize = inspect.unwrap(memorize)
_memorize_naive = inspect.unwrap(memorize_naive)
_retrieve = inspect.unwrap(retrieve)
_swa = inspect.unwrap(sliding_window_attention)
_segment = inspect.unwrap(segment_attention)
_nm_forward = inspect.unwrap(NeuralMemory.forward)
_nm_retrieve = inspect.unwrap(NeuralMemory.retrieve)
_nm_init = inspect.unwrap(NeuralMemory.__init__)
_swa_forward = inspect.unwrap(SlidingWindowAttention.forward)
_seg_forward = inspect.unwrap(SegmentAttention.forward)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]


def _finite(out: Any) -> bool:
    if isinstance(out, Tensor):
        return bool(torch.isfinite(out).all())
    if isinstance(out, (tuple, list)):
        return all(_finite(o) for o in out)
    if isinstance(out, dict):
        return all(_finite(o) for o in out.values())
    if hasattr(out, "__dataclass_fields__"):
        return all(_finite(getattr(out, f)) for f in out.__dataclass_fields__)
    return True


def outcome(entry: str, call: Callable[[], Any], faults: list[str], *, finite: bool = True) -> Any:
    """Runs ``call`` and checks its outcome against the predicted ``faults``.

    ``finite=False``: the inputs hold non-finite data on purpose (the user's data passes
    through, documented); the output must then hold a non-finite value too.
    """
    try:
        out = call()
    except (ValueError, TypeError) as err:
        message = str(err)
        assert faults, f"{entry} refused a valid call: {type(err).__name__}: {message}"
        assert message.split(":")[0] in _PREFIXES[entry], f"{entry}: unprefixed error {message!r}"
        assert any(f in message for f in faults), f"{entry}: {message!r} names none of {faults}"
        event(f"{entry}: refused ({type(err).__name__})")
        return None
    assert not faults, f"{entry} accepted a call with bad {faults}"
    if finite:
        assert _finite(out), f"{entry}: a valid call gave a non-finite result"
        event(f"{entry}: accepted, finite")
    else:
        assert not _finite(out), f"{entry}: non-finite input data vanished"
        event(f"{entry}: accepted, non-finite data passed through")
    return out


_PREFIXES = {
    "memorize": ("memorize",),
    "memorize_naive": ("memorize_naive",),
    "retrieve": ("retrieve",),
    "NeuralMemory": ("NeuralMemory", "MLPMemory", "LearnedGate", "ConstantGate"),
    "sliding_window_attention": ("sliding_window_attention",),
    "segment_attention": ("segment_attention", "segment_attention (prefix)", "segment_attention (memory)"),
    "SlidingWindowAttention": ("SlidingWindowAttention",),
    "SegmentAttention": ("SegmentAttention",),
}

class Picker:
    """Draws arguments; in a clean example (half of them) only from the valid options."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.clean = data.draw(st.booleans(), label="clean")

    def __call__(self, label: str, valid: list[Any], invalid: list[Any] = ()) -> Any:  # type: ignore[assignment]
        options = list(valid) if self.clean else list(valid) * 2 + list(invalid)
        return self.data.draw(st.sampled_from(options), label=label)


# ---------------------------------------------------------------------------------------------
# memorize, memorize_naive, retrieve

_MEMORIES: dict[tuple[str, torch.dtype], Any] = {}


def _dtype(pick: Picker, label: str, expected: torch.dtype, faults: list[str]) -> torch.dtype:
    """A dtype for an input that must have ``expected``: another floating one is a "dtype"
    fault, an integer one a "floating-point" fault."""
    dtype = pick(label, [expected], [d for d in DTYPES if d != expected])
    if dtype == torch.int64:
        faults.append("floating-point")
    elif dtype != expected:
        faults.append("dtype")
    return dtype


def _memory(kind: str, dtype: torch.dtype) -> Any:
    if (kind, dtype) not in _MEMORIES:
        torch.manual_seed(0)
        mem = LinearMemory(4, 4, init_std=0.3) if kind == "linear" else MLPMemory(4, depth=2, expansion=1)
        _MEMORIES[kind, dtype] = mem.to(dtype)
    return _MEMORIES[kind, dtype]


_STATES: dict[tuple[int, int, int, int], Any] = {}


def _state(mem: Any, batch: int, heads: int, chunk: int) -> Any:
    """A state left by ``memorize`` after 3 tokens (mid-chunk for chunks of 2 and 4), cached."""
    key = (id(mem), batch, heads, chunk)
    if key not in _STATES:
        x = torch.randn(batch, heads, 3, 4, generator=torch.Generator().manual_seed(2),
                        dtype=next(mem.parameters()).dtype)
        with torch.no_grad():
            _STATES[key] = _memorize(mem, x, x, x, 0.5, 0.5, 0.1, chunk_size=chunk)[1]
    return _STATES[key]


# Gate values: (value, valid for lr, valid for momentum and decay).
GATE_VALUES = [
    (0.0, True, True), (0.3, True, True), (1.0, True, True), (2.0, True, False),
    (-0.1, False, False), (1.5, True, False), (math.nan, False, False), (math.inf, False, False),
]


def _gate(pick: Picker, name: str, shape: tuple[int, ...], dtype: torch.dtype,
          faults: list[str], allow_none: bool) -> Any:
    kind = pick(f"{name} kind", (["none"] if allow_none else []) + ["tensor", "number"],
                ["wrong_shape", "wrong_dtype"])
    if kind == "none":
        return None
    valid = [g for g in GATE_VALUES if (g[1] if name == "lr" else g[2])]
    value, ok_lr, ok_unit = pick(f"{name} value", valid, [g for g in GATE_VALUES if g not in valid])
    ok = ok_lr if name == "lr" else ok_unit
    if kind == "number":
        if not ok:
            faults.append(name)
        return value
    base = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * (0.9 if name != "lr" else 1.0)
    if base.numel():
        base.view(-1)[pick.data.draw(st.integers(0, base.numel() - 1), label=f"{name} at")] = value
        if not ok:
            faults.append(name)
    if kind == "wrong_shape":
        faults.append(name)
        base = torch.cat([base, base[..., :1]], dim=-1)
    if kind == "wrong_dtype":
        other = torch.float64 if dtype != torch.float64 else torch.float32
        faults.append(name)
        return base.to(other)
    return base.to(dtype) if dtype.is_floating_point else base


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_fuzz_memorize(data: st.DataObject) -> None:
    pick = Picker(data)
    fn_name = data.draw(st.sampled_from(["memorize", "memorize_naive"]), label="fn")
    fn = _memorize if fn_name == "memorize" else _memorize_naive
    faults: list[str] = []
    mem_dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="memory dtype")
    mem = _memory(data.draw(st.sampled_from(["linear", "mlp"]), label="memory"), mem_dtype)
    batch, heads = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    seq = pick("seq", [1, 2, 3, 4, 5, 6], [0])
    if seq == 0:
        faults.append("empty")
    dtype = _dtype(pick, "dtype", mem_dtype, faults)
    dim_k = pick("dim_k", [4], [3])
    if dim_k != 4:
        faults.append("dim_in")
    dim_v = pick("dim_v", [4], [5])
    if dim_v != 4:
        faults.append("dim_out")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed"))

    def tensor(d: int) -> Tensor:
        t = torch.randn(batch, heads, seq, d, generator=g)
        return t.to(dtype) if dtype.is_floating_point else (t * 3).to(dtype)

    q, k, v = tensor(dim_k), tensor(dim_k), tensor(dim_v)
    nan_data = seq > 0 and dtype.is_floating_point and pick("nan in v", [False] * 4 + [True])
    if nan_data:
        v[0, 0, 0, 0] = math.nan
    gate_dtype = dtype if dtype.is_floating_point else torch.float32
    shape = (batch, heads, seq)
    lr = _gate(pick, "lr", shape, gate_dtype, faults, allow_none=False)
    momentum = _gate(pick, "momentum", shape, gate_dtype, faults, allow_none=True)
    decay = _gate(pick, "decay", shape, gate_dtype, faults, allow_none=True)
    chunk = pick("chunk_size", [1, 2, 3, 4], [0, 2.5, True])
    if not (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1):
        faults.append("chunk_size")
    state = None
    state_kind = pick("state", ["none", "none", "same"], ["other_chunk", "other_batch"])
    if state_kind != "none":
        made_chunk = data.draw(st.integers(1, 4), label="state chunk") if state_kind == "other_chunk" else chunk
        if not isinstance(made_chunk, int) or isinstance(made_chunk, bool) or made_chunk < 1:
            made_chunk = 2
        made_batch = batch + 1 if state_kind == "other_batch" else batch
        state = _state(mem, made_batch, heads, made_chunk)
        if made_chunk != chunk:
            faults.append("chunk_size")
        if made_batch != batch:
            faults.append("state")
    forget = pick("forget_target", ["zero", "init"], ["sometimes"])
    if forget == "sometimes":
        faults.append("forget_target")
    with torch.no_grad():
        outcome(fn_name, lambda: fn(mem, q, k, v, lr, momentum, decay, chunk_size=chunk, state=state,
                                   forget_target=forget), faults, finite=not nan_data)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_fuzz_retrieve(data: st.DataObject) -> None:
    pick = Picker(data)
    faults: list[str] = []
    mem = _memory(data.draw(st.sampled_from(["linear", "mlp"])), torch.float32)
    batch, heads = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    state = _state(mem, batch, heads, 2)
    q_batch = pick("q batch", [batch], [batch + 1])
    if q_batch != batch:
        faults.append("state")
    seq = pick("seq", [1, 2, 4], [0])
    if seq == 0:
        faults.append("empty")
    dim = pick("dim", [4], [5])
    if dim != 4:
        faults.append("dim_in")
    dtype = _dtype(pick, "dtype", torch.float32, faults)
    q = torch.randn(q_batch, heads, seq, dim).to(dtype)
    if pick("rank 3", [False], [True]):
        q = q.flatten(0, 1)
        faults.append("shape")
    bad_state = pick("bad state", [None], ["text", "other memory"])
    if bad_state == "text":
        state = "text"
        faults.append("MemoryState")
    elif bad_state == "other memory":
        other = _memory("mlp" if isinstance(mem, LinearMemory) else "linear", torch.float32)
        state = other.init_state(batch, heads)
        faults.append("fast weights")
    with torch.no_grad():
        outcome("retrieve", lambda: _retrieve(mem, state, q), faults)


# ---------------------------------------------------------------------------------------------
# NeuralMemory

# Constant gate settings: (value, valid for lr_gate, valid for momentum_gate and decay_gate).
NM_GATES = [("learned", True, True), (0.0, True, True), (0.5, True, True), (2.0, True, False),
            (-1.0, False, False), (math.nan, False, False), (math.inf, False, False),
            ("sometimes", False, False), (None, False, True)]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_neural_memory(data: st.DataObject) -> None:
    pick = Picker(data)
    faults: list[str] = []
    kw: dict[str, Any] = {}
    kw["dim"] = pick("dim", [8], [0, 8.0])
    if kw["dim"] != 8 or isinstance(kw["dim"], float):
        faults.append("dim")
    kw["heads"] = pick("heads", [1, 2, 3], [True])
    small = data.draw(st.booleans(), label="small memory")
    if small:
        dim_head = 8 // kw["heads"] if kw["heads"] in (1, 2) else 4
        kw["memory"] = MLPMemory(dim_head, depth=1)
        kw["dim_head"] = dim_head
    if kw["heads"] is True:
        faults.append("heads")
    elif kw["heads"] == 3 and not small and "dim" not in faults:
        faults.append("heads=3")
    kw["chunk_size"] = pick("chunk_size", [1, 2, 3], [0, 1.5])
    if not (isinstance(kw["chunk_size"], int) and kw["chunk_size"] >= 1):
        faults.append("chunk_size")
    kw["objective"] = pick("objective", [None, "huber", "squared_error", "lp", "dot_product"], ["bogus", 5])
    if kw["objective"] in ("bogus", 5):
        faults.append("objective")
    kw["optimizer"] = pick("optimizer", ["momentum", "gd"], ["adam"])
    if kw["optimizer"] == "adam":
        faults.append("optimizer")
    for gate in ("lr_gate", "momentum_gate", "decay_gate"):
        valid = [g for g in NM_GATES if (g[1] if gate == "lr_gate" else g[2])]
        if gate == "momentum_gate" and kw["optimizer"] == "gd":
            valid = [g for g in valid if g[0] in ("learned", None)]
        value, ok_lr, ok_unit = pick(gate, valid, [g for g in NM_GATES if g not in valid])
        kw[gate] = value
        if not (ok_lr if gate == "lr_gate" else ok_unit):
            faults.append(gate)
    if kw["optimizer"] == "gd" and kw["momentum_gate"] not in ("learned", None):
        faults.append("momentum")
    kw["conv_kernel"] = pick("conv_kernel", [None, 0, 2, 4], [-1, 2.5])
    if kw["conv_kernel"] in (-1, 2.5):
        faults.append("conv_kernel")
    kw["qk_norm"] = pick("qk_norm", [True, False], ["no"])
    if kw["qk_norm"] == "no":
        faults.append("qk_norm")
    layer = NeuralMemory.__new__(NeuralMemory)
    built = outcome("NeuralMemory", lambda: _nm_init(layer, **kw) or layer, faults)
    if built is None:
        return
    pick = Picker(data)
    faults = []
    batch = data.draw(st.integers(1, 2), label="batch")
    seq = pick("seq", [1, 2, 3, 5], [0])
    if seq == 0:
        faults.append("empty")
    width = pick("width", [8], [7])
    if width != 8:
        faults.append("shape")
    dtype = _dtype(pick, "x dtype", torch.float32, faults)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed"))
    x = (torch.randn(batch, seq, width, generator=g) * 2).to(dtype)
    state = None
    state_kind = pick("state", ["none", "own"], ["other batch", "other chunk", "other conv"])
    if state_kind != "none":
        other_kw = dict(kw)
        if state_kind == "other chunk":
            other_kw["chunk_size"] = kw["chunk_size"] % 3 + 1
            faults.append("chunk_size")
        if state_kind == "other conv":
            other_kw["conv_kernel"] = 3 if kw["conv_kernel"] in (None, 0, 2) else 2
            faults.append("conv")
        maker = built if state_kind in ("own", "other batch") else NeuralMemory(**other_kw)
        state_batch = batch + 1 if state_kind == "other batch" else batch
        if state_batch != batch:
            faults.append("batch")
        with torch.no_grad():
            _, state = _nm_forward(maker, torch.randn(state_batch, 4, 8, generator=g), None)
    read = data.draw(st.booleans(), label="retrieve")
    call = (lambda: _nm_retrieve(built, x, state)) if read else (lambda: _nm_forward(built, x, state))
    with torch.no_grad():
        outcome("NeuralMemory", call, faults)


# ---------------------------------------------------------------------------------------------
# Attention


def _int_arg(pick: Picker, name: str, valid: list[Any], invalid: list[Any], faults: list[str]) -> Any:
    value = pick(name, valid, invalid)
    if not (value is None or (type(value) is int and value in valid)):
        faults.append(name)
    return value


def _qkv(pick: Picker, faults: list[str]) -> tuple[Any, Any, Any]:
    batch = pick("batch", [1, 2], [0])
    heads = pick("heads", [1, 2], [0])
    seq = pick("seq", [1, 3, 6], [0])
    dh = pick("dim_head", [2, 4], [0])
    for name, n in (("batch", batch), ("heads", heads), ("seq", seq), ("dim_head", dh)):
        if n == 0:
            faults.append(name)
    dtype = pick("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], [torch.int64])
    if dtype == torch.int64:
        faults.append("floating-point")
    g = torch.Generator().manual_seed(pick.data.draw(st.integers(0, 99), label="seed"))
    q, k, v = (torch.randn(batch, heads, seq, dh, generator=g).mul(3).to(dtype) for _ in range(3))
    mismatch = pick("mismatch", [None], ["k seq", "v dtype", "q rank", "v list"])
    if mismatch == "k seq":
        k = torch.cat([k, k[:, :, :1]], dim=2)
        faults += ["seq", "shapes differ"]
    elif mismatch == "v dtype":
        v = v.to(torch.float64 if dtype != torch.float64 else torch.float32)
        faults.append("dtype")
    elif mismatch == "q rank":
        q = q.flatten(0, 1)
        faults.append("(batch, heads, seq, dim_head)")
    elif mismatch == "v list":
        v = v.tolist()
        faults.append("torch.Tensor")
    return q, k, v


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fuzz_sliding_window_attention(data: st.DataObject) -> None:
    pick = Picker(data)
    faults: list[str] = []
    q, k, v = _qkv(pick, faults)
    window = _int_arg(pick, "window", [1, 2, 3, 8], [0, -1, 2.5, True], faults)
    num_prefix = _int_arg(pick, "num_prefix", [0, 1, 2], [-1, 1.0], faults)
    if type(num_prefix) is int and q.ndim == 4 and num_prefix > q.shape[2]:
        faults.append("num_prefix")
    block = _int_arg(pick, "block", [None, 1, 3], [0, 1.5, False], faults)
    scale = pick("scale", [None, 0.5, 2], [math.nan, math.inf, "big"])
    if scale in ("big",) or (isinstance(scale, float) and not math.isfinite(scale)):
        faults.append("scale")
    cuda = torch.cuda.is_available() and q.device.type == "cuda"
    backend = pick("backend", ["blocked", "sdpa", "dense"] + (["flex"] if cuda else []),
                   ["fast"] + ([] if cuda else ["flex"]))
    if backend == "fast" or (backend == "flex" and not cuda):
        faults.append("backend")
    outcome("sliding_window_attention",
            lambda: _swa(q, k, v, window=window, num_prefix=num_prefix, scale=scale, backend=backend,
                         block=block), faults)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fuzz_segment_attention(data: st.DataObject) -> None:
    pick = Picker(data)
    faults: list[str] = []
    q, k, v = _qkv(pick, faults)
    segment = _int_arg(pick, "segment", [1, 2, 3], [0, 2.5, True], faults)
    memory = pick("memory", ["none", "full"], ["too many"])
    mem_k = mem_v = None
    if memory != "none" and q.ndim == 4 and "segment" not in faults:
        segments = -(-q.shape[2] // segment)
        n = segments * segment + (segment if memory == "too many" else 0)
        mem_k = torch.randn(q.shape[0], q.shape[1], n, q.shape[3]).to(q.dtype)
        mem_v = mem_k.clone()
        if memory == "too many" and q.shape[2] > 0:
            faults.append("memory tokens")
    outcome("segment_attention",
            lambda: _segment(q, k, v, segment=segment, memory_k=mem_k, memory_v=mem_v), faults)


_swa_init = inspect.unwrap(SlidingWindowAttention.__init__)
_seg_init = inspect.unwrap(SegmentAttention.__init__)


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_fuzz_attention_modules(data: st.DataObject) -> None:
    pick = Picker(data)
    faults: list[str] = []
    which = data.draw(st.sampled_from(["SlidingWindowAttention", "SegmentAttention"]), label="module")
    heads = _int_arg(pick, "heads", [1, 2], [0, 2.0], faults)
    rotary = pick("rotary", [True, False], [1])
    if type(rotary) is not bool:
        faults.append("rotary")
    if which == "SlidingWindowAttention":
        window = _int_arg(pick, "window", [1, 2, 4], [0, 2.5, True], faults)
        num_prefix = _int_arg(pick, "num_prefix", [0, 1], [-1], faults)
        module: Any = SlidingWindowAttention.__new__(SlidingWindowAttention)
        kw = dict(window=window, num_prefix=num_prefix, rotary=rotary)
        init = _swa_init
    else:
        segment = _int_arg(pick, "segment", [1, 2, 3], [0, 1.5, False], faults)
        num_prefix = 0
        module = SegmentAttention.__new__(SegmentAttention)
        kw = dict(segment=segment, rotary=rotary)
        init = _seg_init
    module = outcome(which, lambda: init(module, 8, heads, **kw) or module, faults)
    if module is None:
        return
    pick = Picker(data)
    faults = []
    batch = pick("batch", [1, 2], [0])
    seq = pick("seq", [1, 3, 5], [0])
    width = pick("width", [8], [6])
    dtype = _dtype(pick, "x dtype", torch.float32, faults)
    if batch == 0:
        faults.append("batch")
    if seq == 0 or width != 8:
        faults.append("expected" if which == "SlidingWindowAttention" else "must be")
    x = torch.randn(batch, seq, width).to(dtype)
    if which == "SlidingWindowAttention":
        cache = None
        if data.draw(st.booleans(), label="with cache"):
            _, cache = _swa_forward(module, torch.randn(batch or 1, max(num_prefix, 2), 8))
        elif 0 < seq < num_prefix:
            faults.append("prefix")
        with torch.no_grad():
            outcome(which, lambda: _swa_forward(module, x, cache=cache), faults)
    else:
        mem = None
        if data.draw(st.booleans(), label="with memory") and seq > 0:
            segments = -(-seq // module.segment)
            mem = torch.randn(batch, segments * module.memory_per_segment, 8).to(
                dtype if dtype.is_floating_point else torch.float32)
        with torch.no_grad():
            outcome(which, lambda: _seg_forward(module, x, memory=mem), faults)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_dtype_rule_names_both_dtypes(dtype: torch.dtype) -> None:
    """A float32 NeuralMemory refuses other floating inputs at the entry, naming both dtypes
    (it used to fail deep inside with 'expected m1 and m2 to have the same dtype'); under
    autocast a bfloat16 input is accepted, a float64 one (which autocast leaves alone) is not."""
    layer = NeuralMemory(8, heads=2, chunk_size=2)
    x = torch.randn(1, 3, 8, dtype=dtype)
    with pytest.raises(ValueError, match=rf"NeuralMemory: x has dtype {dtype} but .* torch.float32"):
        _nm_forward(layer, x, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if dtype == torch.float64:
            with pytest.raises(ValueError, match="NeuralMemory: x has dtype torch.float64"):
                _nm_forward(layer, x, None)
        else:
            y, _ = _nm_forward(layer, x, None)
            assert torch.isfinite(y.float()).all()
