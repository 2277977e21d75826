"""Run by tests/titans/test_compile.py in a fresh process (without the test suite's runtime
shape checks, which wrap every annotated function in a checker dynamo cannot trace; a user's
model has none): traces and compiles the tiny models, prints one JSON line of findings."""

from __future__ import annotations

import json
import sys

import torch
import torch._dynamo as dynamo

from memory_blocks import LinearMemory, MLPMemory, NeuralMemory
from titans import TitansConfig, TitansLM

VARIANTS = ("mac", "mag", "mal", "lmm", "swa", "transformer")
MEMORY_VARIANTS = ("mac", "mag", "mal", "lmm")


def tiny(variant: str) -> TitansLM:
    torch.manual_seed(0)
    cfg = TitansConfig(
        variant=variant, vocab_size=32, dim=16, depth=1, heads=2, window=8, segment_len=8,
        chunk_size=4, num_persistent=2, memory_block_chunks=2,
    )
    return TitansLM(cfg).double()


def ids(seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 32, (2, seq), generator=torch.Generator().manual_seed(seed))


def breaks(fn, *args) -> list[str]:
    dynamo.reset()
    report = dynamo.explain(fn)(*args)
    return [str(b.reason).splitlines()[0] for b in report.break_reasons][: max(report.graph_break_count, 0)] or (
        [] if report.graph_break_count == 0 else ["(no reason given)"] * report.graph_break_count
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def compiled_vs_eager(variant: str) -> dict:
    model = tiny(variant)
    x, y = ids(21, 1), ids(21, 2)  # 21 tokens: partial chunks and segments at the end
    eager = model(x, labels=y)
    eager.loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    dynamo.reset()
    out = torch.compile(model, backend="aot_eager", fullgraph=True)(x, labels=y)
    out.loss.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {
        "logits": max_diff(out.logits, eager.logits),
        "loss": abs(float(out.loss - eager.loss)),
        "grad_names_equal": sorted(got) == sorted(want),
        "grads": len(want),
        "grad": max((max_diff(got[n], want[n]) for n in want if n in got), default=float("inf")),
        "finite": bool(torch.isfinite(out.logits).all()) and all(torch.isfinite(g).all() for g in got.values()),
    }


def inductor_vs_eager(variant: str, device: str) -> dict:
    """The default compiler (Triton kernels on a GPU) against eager, float32: relative errors."""
    torch.manual_seed(0)
    cfg = TitansConfig(variant=variant, vocab_size=256, dim=128, depth=2, heads=4, chunk_size=16,
                       window=64, segment_len=64)
    model = TitansLM(cfg).to(device)
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, 256, (2, 200), generator=g).to(device) for _ in range(2))  # a partial chunk at the end
    eager = model(x, labels=y)
    eager.loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    dynamo.reset()
    out = torch.compile(model, fullgraph=True)(x, labels=y)
    out.loss.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach() - b.detach()).norm() / b.detach().norm().clamp_min(1e-30))

    return {
        "logits_rel": rel(out.logits, eager.logits),
        "grads_rel": rel(torch.cat([got[n].flatten() for n in want]), torch.cat([g.flatten() for g in want.values()])),
        "finite": bool(torch.isfinite(out.logits).all()) and all(bool(torch.isfinite(g).all()) for g in got.values()),
    }


def memorize_property(examples: int) -> list[str]:
    """Hypothesis over sizes, chunkings, memories and forgetting targets: the compiled
    ``memorize`` (AOTAutograd) against the token loop ``memorize_naive``, float64, forward and
    the gradients of every input and of ``W_0``. Returns the failures (empty when all hold)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from memory_blocks import memorize, memorize_naive
    from tests.memory_blocks.functional.cases import make_inputs, make_memory

    failures: list[str] = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None)
    @given(
        seq=st.integers(1, 23), chunk=st.sampled_from([1, 3, 4]), kind=st.sampled_from(["linear", "mlp2"]),
        target=st.sampled_from(["init", "zero"]), seed=st.integers(0, 2**16),
    )
    def check(seq: int, chunk: int, kind: str, target: str, seed: int) -> None:
        mem = make_memory(kind, 4, seed)
        inputs = make_inputs(seed, 1, 2, seq, 4)
        leaves = [t.clone().requires_grad_() for t in inputs.args()]
        params = list(mem.parameters())

        def grads(fn) -> list[torch.Tensor]:
            y, state = fn(mem, *leaves, chunk_size=chunk, forget_target=target)
            total = y.square().sum() + sum(w.square().sum() for w in state.weights.values())
            return [y.detach(), *torch.autograd.grad(total, leaves + params, allow_unused=True)]

        want = grads(memorize_naive)
        dynamo.reset()
        got = grads(torch.compile(memorize, backend="aot_eager"))
        for i, (a, b) in enumerate(zip(got, want)):
            if (a is None) != (b is None) or (a is not None and not torch.allclose(a, b, rtol=1e-9, atol=1e-11)):
                failures.append(f"seq={seq} chunk={chunk} {kind} {target} seed={seed}: output {i} differs")
                return

    check()
    return failures


def compiled_blocks(backend: str) -> dict:
    """``NeuralMemory(compile_blocks=backend)`` against the eager layer, float64: outputs, state
    and every parameter's gradient, over several blocks, a partial last block and a partial
    last chunk (three block shapes, each compiled once), then a streamed second piece."""
    torch.manual_seed(0)
    eager = NeuralMemory(16, heads=2, chunk_size=4, memory=MLPMemory(8), block_chunks=2).double()
    compiled = NeuralMemory(16, heads=2, chunk_size=4, memory=MLPMemory(8), block_chunks=2,
                            compile_blocks=backend).double()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 30, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    found: dict = {}
    for name, layer in (("eager", eager), ("compiled", compiled)):
        dynamo.reset()
        y, state = layer(x[:, :23])
        y2, state2 = layer(x[:, 23:], state)
        (y.square().sum() + y2.square().sum()).backward()
        found[name] = (torch.cat([y, y2], 1).detach(), state2.memory.weights,
                       {n: p.grad for n, p in layer.named_parameters()})
    (ya, wa, ga), (yb, wb, gb) = found["eager"], found["compiled"]
    return {
        "y": max_diff(yb, ya),
        "state": max(max_diff(wb[n], wa[n]) for n in wa),
        "grad": max(max_diff(gb[n], ga[n]) for n in ga),
        "grads": len(ga),
    }


def stream() -> float:
    model = tiny("mag")
    x = ids(24, 3)
    with torch.no_grad():
        first = model(x[:, :16])
        want = model(x[:, 16:], first.state).logits
        dynamo.reset()
        got = torch.compile(model, backend="aot_eager")(x[:, 16:], first.state).logits
    return max_diff(got, want)


def main() -> None:
    what = sys.argv[1]
    result: dict = {}
    if what == "breaks":
        for v in VARIANTS:
            model = tiny(v)
            result[v] = breaks(lambda i, l, m=model: m(i, labels=l).loss, ids(21, 1), ids(21, 2))
        for memory in ("mlp", "linear"):
            for seq in (16, 13, 3):
                torch.manual_seed(0)
                inner = MLPMemory(8) if memory == "mlp" else LinearMemory(8, 8)
                layer = NeuralMemory(16, heads=2, chunk_size=4, memory=inner, block_chunks=2)
                x = torch.randn(2, seq, 16)
                result[f"layer-{memory}-{seq}"] = breaks(lambda t, m=layer: m(t)[0], x)
    elif what == "inductor":  # on a GPU: python -m tests.titans.compile_probe inductor cuda mag,mac
        device = sys.argv[2]
        for v in sys.argv[3].split(","):
            result[v] = inductor_vs_eager(v, device)
    elif what == "equal":
        for v in sys.argv[2].split(","):
            result[v] = compiled_vs_eager(v)
        result["stream"] = stream()
    elif what == "blocks":
        result = compiled_blocks(sys.argv[2])
    elif what == "memorize":
        result["failures"] = memorize_property(int(sys.argv[2]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
