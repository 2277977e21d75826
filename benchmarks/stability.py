"""The stability suite: does the memory's inner learning stay finite, bounded and alive?

For NeuralMemory layers built like a preset's (``build_memory``), untrained, every combination of

- memory model: ``linear``, ``mlp`` (depth 2), ``mlp4`` (depth 4), ``gated_mlp``;
- chunk size: 1, 4, 16, 64;
- layer shape: the ``tiny`` preset's and the ``170m`` preset's memory layer;
- input: ``random`` (independent Gaussians), ``repeat`` (one vector), ``periodic`` (16 vectors),
  ``zeros``, ``large`` (random x 100);
- gates: ``default`` (the learned gates at initialisation), or pinned to the ends of their
  learned ranges: ``high`` (theta, eta, alpha all at their ceilings), ``low`` (all at their
  floors), ``hot`` (theta at its ceiling, no momentum, no forgetting: the largest raw steps),
  ``hot_momentum`` (theta and eta at their ceilings, no forgetting);

the layer reads ``--length`` tokens (in pieces of 4,096, carrying its state) and the script
checks that every output is finite, that the fast weights stay bounded (``max |W| < 1e4``) and
that they do not collapse (no subnormal entry, no tensor shrunk by more than 1e6 from ``W_0``). ``--rules literal`` runs the paper's literal
update instead (``step_scale="literal"``, ``forget_target="zero"``), for the table before.

Run: ``python benchmarks/stability.py [--rules default|literal] [--length 16384] [--shapes
tiny,170m] [--memories ...] [--chunks ...] [--inputs ...] [--gates ...]``; ``--stream 1000000``
instead streams that many tokens through the 170m layer (random and repeat) and reports the
fast weights' size and the process' resident memory every 10% of the way.
Figures: docs/guides/stability.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import resource
import time

import torch

from memory_blocks import ConstantGate, NeuralMemory
from titans import TitansConfig
from titans.builders import build_memory

PIECE = 4096
MEMORIES = {"linear": ("linear", 2), "mlp": ("mlp", 2), "mlp4": ("mlp", 4), "gated_mlp": ("gated_mlp", 2)}
GATES = ("default", "high", "low", "hot", "hot_momentum")
INPUTS = ("random", "repeat", "periodic", "zeros", "large")


def make_layer(shape: str, memory: str, chunk: int, rules: str) -> NeuralMemory:
    model, depth = MEMORIES[memory]
    literal = {"step_scale": "literal", "forget_target": "zero"} if rules == "literal" else {}
    config = TitansConfig.preset(shape, variant="lmm", memory_model=model, memory_depth=depth,
                                 chunk_size=chunk, **literal)
    torch.manual_seed(0)
    return build_memory(config)


def pin(layer: NeuralMemory, gates: str) -> None:
    """Replace the learned gates by constants at the ends of their ranges."""
    if gates == "default":
        return
    lr_max = layer.lr_gate.max_value
    hi, lo = 1 - 1e-3, 1e-3
    theta, eta, alpha = {
        "high": (lr_max * hi, hi, hi),
        "low": (lr_max * lo, lo, lo),
        "hot": (lr_max * hi, 0.0, 0.0),
        "hot_momentum": (lr_max * hi, hi, 0.0),
    }[gates]
    layer.lr_gate = ConstantGate(theta, layer.heads)
    layer.momentum_gate = ConstantGate(eta, layer.heads)
    layer.decay_gate = ConstantGate(alpha, layer.heads)


def make_input(kind: str, length: int, dim: int, piece: int) -> torch.Tensor:
    """Piece number ``piece`` (``PIECE`` tokens or fewer) of an input of kind ``kind``."""
    gen = torch.Generator().manual_seed(1000 + piece)
    if kind == "random":
        return torch.randn(1, length, dim, generator=gen)
    if kind == "large":
        return 100 * torch.randn(1, length, dim, generator=gen)
    if kind == "zeros":
        return torch.zeros(1, length, dim)
    base = torch.Generator().manual_seed(1)
    if kind == "repeat":
        return torch.randn(1, 1, dim, generator=base).expand(1, length, dim).contiguous()
    if kind == "periodic":
        return torch.randn(1, 16, dim, generator=base).repeat(1, length // 16 + 1, 1)[:, :length].contiguous()
    raise ValueError(f"unknown input {kind!r}")


@dataclasses.dataclass
class Result:
    finite: bool
    largest: float
    smallest: float  # the smallest per-tensor max |W|: a collapsing memory shows here
    subnormal: int
    collapsed: bool  # a tensor whose largest entry shrank by more than 1e6 from W_0's
    seconds: float

    @property
    def ok(self) -> bool:
        return self.finite and self.largest < 1e4 and self.subnormal == 0 and not self.collapsed

    @property
    def mark(self) -> str:
        if not self.finite:
            return "NaN"
        if self.largest >= 1e4:
            return "unbounded"
        if self.subnormal:
            return "subnormal"
        return "collapsed" if self.collapsed else "ok"


def weights_report(layer_state) -> tuple[float, float, int]:  # noqa: ANN001
    ws = list(layer_state.memory.weights.values())
    tiny = torch.finfo(ws[0].dtype).tiny
    largest = max(float(w.abs().max()) for w in ws)
    smallest = min(float(w.abs().max()) for w in ws)
    subnormal = sum(int(((w != 0) & (w.abs() < tiny)).sum()) for w in ws)
    return largest, smallest, subnormal


def collapsed(layer: NeuralMemory, layer_state) -> bool:  # noqa: ANN001
    """Did a fast-weight tensor that starts non-zero shrink by more than 1e6?"""
    for name, w0 in layer.memory.initial_weights().items():
        start = float(w0.detach().abs().max())
        if start > 0 and float(layer_state.memory.weights[name].abs().max()) < 1e-6 * start:
            return True
    return False


def run(layer: NeuralMemory, kind: str, length: int) -> Result:
    began = time.perf_counter()
    state = None
    finite = True
    with torch.no_grad():
        for i, start in enumerate(range(0, length, PIECE)):
            x = make_input(kind, min(PIECE, length - start), layer.dim, i)
            y, state = layer(x, state)
            finite = finite and bool(y.isfinite().all())
    assert state is not None
    largest, smallest, subnormal = weights_report(state)
    finite = finite and all(bool(w.isfinite().all()) for w in state.memory.weights.values())
    return Result(finite, largest, smallest, subnormal, collapsed(layer, state), time.perf_counter() - began)


def table(args: argparse.Namespace) -> None:
    print(f"rules={args.rules} length={args.length}")
    print("| shape | memory | chunk | gates | " + " | ".join(args.inputs) + " | s |")
    print("|---|---|---:|---|" + "---|" * len(args.inputs) + "---:|")
    failures = total = 0
    for shape, memory, chunk, gates in itertools.product(args.shapes, args.memories, args.chunks, args.gates):
        layer = make_layer(shape, memory, chunk, args.rules)
        pin(layer, gates)
        cells, seconds = [], 0.0
        for kind in args.inputs:
            r = run(layer, kind, args.length)
            seconds += r.seconds
            total += 1
            failures += not r.ok
            cells.append(f"{r.mark} {r.largest:.2g}/{r.smallest:.1g}")
        print(f"| {shape} | {memory} | {chunk} | {gates} | " + " | ".join(cells) + f" | {seconds:.0f} |", flush=True)
    print(f"\n{total - failures} of {total} cases finite, bounded (max |W| < 1e4), without subnormals and "
          "not collapsed (cells: max |W| / smallest per-tensor max |W|)")


def stream(args: argparse.Namespace) -> None:
    layer = make_layer("170m", "mlp", 16, args.rules)
    print(f"stream {args.stream} tokens through the 170m memory layer (mlp, chunk 16, rules={args.rules})")
    print("| input | tokens | finite | max abs W | smallest tensor max | subnormal | max RSS MiB | tokens/s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for kind in ("random", "repeat"):
        state, finite, began = None, True, time.perf_counter()
        report_every = max(PIECE, args.stream // 10 // PIECE * PIECE)
        with torch.no_grad():
            for i, start in enumerate(range(0, args.stream, PIECE)):
                y, state = layer(make_input(kind, min(PIECE, args.stream - start), layer.dim, i), state)
                finite = finite and bool(y.isfinite().all())
                done = start + y.shape[1]
                if done % report_every == 0 or done == args.stream:
                    largest, smallest, subnormal = weights_report(state)
                    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    rate = done / (time.perf_counter() - began)
                    print(f"| {kind} | {done:,} | {finite} | {largest:.3g} | {smallest:.3g} | {subnormal} | "
                          f"{rss:.0f} | {rate:,.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rules", choices=("default", "literal"), default="default")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=["tiny", "170m"])
    parser.add_argument("--memories", type=lambda s: s.split(","), default=list(MEMORIES))
    parser.add_argument("--chunks", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16, 64])
    parser.add_argument("--inputs", type=lambda s: s.split(","), default=list(INPUTS))
    parser.add_argument("--gates", type=lambda s: s.split(","), default=list(GATES))
    parser.add_argument("--stream", type=int, default=0, help="stream this many tokens instead of the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.stream:
        stream(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
