"""Speed and memory of the neural memory (NeuralMemory forward + backward).

Configuration of the issue: dim 256, one head, 2-layer MLP memory with expansion 4, chunk 16,
batch 2, float32, 2 threads. Every measurement runs in a fresh process so that its peak
memory is its own (CPU: the process' peak resident set; CUDA: peak allocated by torch).

The layer runs at its defaults (normalised step, forgetting towards ``W_0``, learned gates as
initialised; docs/guides/stability.md): no gate is tuned for the benchmark. (Before those
defaults the paper's literal update diverged here at chunk 16, and figures had to be taken at
hand-picked small gates.) Each measurement checks that outputs and gradients are finite.

    python benchmarks/bench_memory.py                  # the table of docs/benchmarks.md
    python benchmarks/bench_memory.py --checkpoint     # recompute blocks: less memory, slower
    python benchmarks/bench_memory.py --lengths 1024 --forget-target zero  # without W_0: what it costs
    python benchmarks/bench_memory.py --device cuda --lengths 1024,4096,16384,65536
    # the 170m model's memory layer on a GPU, bf16 autocast outside the inner loop, compiled:
    python benchmarks/bench_memory.py --device cuda --dim 768 --heads 16 --batch 16 \
        --lengths 4096,16384 --autocast bf16 --compile blocks
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _setup(device: str, threads: int) -> None:
    if device == "cpu":
        torch.set_num_threads(threads)


def _layer(args: argparse.Namespace, block_chunks: int | None, checkpoint: bool):
    from memory_blocks import MLPMemory, NeuralMemory

    torch.manual_seed(0)
    knobs = {} if block_chunks is None else {"block_chunks": block_chunks}  # None: the layer's default
    if args.forget_target is not None:  # None: the layer's default (towards W_0)
        knobs["forget_target"] = args.forget_target
    layer = NeuralMemory(
        args.dim, heads=args.heads, chunk_size=args.chunk,
        memory=MLPMemory(args.dim // args.heads, depth=2, expansion=4),
        checkpoint=checkpoint, compile_blocks=args.compile == "blocks", **knobs,
    ).to(args.device)
    if args.compile not in ("none", "blocks"):
        return torch.compile(layer, mode=args.compile)
    return layer


def _autocast(args: argparse.Namespace):
    import contextlib

    if args.autocast == "none":
        return contextlib.nullcontext()
    return torch.autocast(args.device, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    """One measurement: tokens/s of forward+backward and the peak memory."""
    _setup(args.device, args.threads)
    layer = _layer(args, args.block_chunks, args.checkpoint)
    x = torch.randn(args.batch, args.worker, args.dim, device=args.device)

    def step() -> bool:
        layer.zero_grad(set_to_none=True)
        with _autocast(args):
            y, _ = layer(x)
        y.float().square().mean().backward()
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        return bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(g).all()) for g in grads)

    finite = step()  # warm-up (and compilation)
    finite = step() and finite
    _sync(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        finite = step() and finite
        _sync(args.device)
        times.append(time.perf_counter() - start)
    t = min(times)
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    return {
        "tokens_per_s": args.batch * args.worker / t, "seconds": t, "peak_mib": peak, "finite": finite,
        "matmul_gflops": matmul_rate(args.device),  # right after the timed steps
    }


def baseline_worker(args: argparse.Namespace) -> dict:
    """The memory of the process with the layer built and nothing run (CPU baseline)."""
    _setup(args.device, args.threads)
    _layer(args, 4, False)
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def naive_vs_parallel(args: argparse.Namespace, seq: int) -> tuple[float, float]:
    """Forward+backward seconds of memorize_naive and memorize on the same inputs."""
    from memory_blocks import MLPMemory, memorize, memorize_naive

    torch.manual_seed(0)
    mem = MLPMemory(args.dim, depth=2, expansion=4).to(args.device)
    shape = (args.batch, 1, seq, args.dim)
    leaves = [torch.nn.functional.normalize(torch.randn(shape, device=args.device), dim=-1).requires_grad_() for _ in range(3)]
    gates = [torch.rand(args.batch, 1, seq, device=args.device) * s for s in (0.01, 0.9, 0.01)]
    out = []
    for fn in (memorize_naive, memorize):
        def step() -> None:
            y, _ = fn(mem, *leaves, *gates, chunk_size=args.chunk)
            y.square().mean().backward()
        step()
        _sync(args.device)
        start = time.perf_counter()
        step()
        _sync(args.device)
        out.append(time.perf_counter() - start)
    return out[0], out[1]


def flops_and_matmul_rate(args: argparse.Namespace, seq: int) -> tuple[float, float, float]:
    """FLOPs of one forward+backward (counted by torch), its GFLOP/s, and a plain matmul's GFLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    layer = _layer(args, args.block_chunks, args.checkpoint)
    x = torch.randn(args.batch, seq, args.dim, device=args.device)
    counter = FlopCounterMode(display=False)
    with counter:
        y, _ = layer(x)
        y.square().mean().backward()
    flops = counter.get_total_flops()
    y, _ = layer(x)
    y.square().mean().backward()
    _sync(args.device)
    start = time.perf_counter()
    y, _ = layer(x)
    y.square().mean().backward()
    _sync(args.device)
    achieved = flops / (time.perf_counter() - start) / 1e9
    return flops, achieved, matmul_rate(args.device)


def matmul_rate(device: str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a plain ``n x n`` float32 matmul: how fast the machine is right now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def run_worker(args: argparse.Namespace, seq: int | str, block_chunks: int | None, checkpoint: bool) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", str(seq), "--device", args.device,
        "--threads", str(args.threads), "--dim", str(args.dim), "--chunk", str(args.chunk),
        "--batch", str(args.batch), "--repeats", str(args.repeats), "--heads", str(args.heads),
        "--compile", args.compile, "--autocast", args.autocast,
    ] + ([] if args.forget_target is None else ["--forget-target", args.forget_target]) + (
        [] if block_chunks is None else ["--block-chunks", str(block_chunks)]) + (
        ["--checkpoint"] if checkpoint else []
    )
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=1, help="memory heads (each of dim / heads features)")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--compile", default="none", choices=["none", "blocks", "default", "reduce-overhead", "max-autotune"],
                        help="blocks: NeuralMemory(compile_blocks=True), each block shape compiled once; "
                             "the others: torch.compile the whole layer with that mode (its graph grows "
                             "with the sequence; reduce-overhead: CUDA graphs)")
    parser.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"],
                        help="autocast around the layer (its inner loop stays float32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--block-chunks", type=int, default=None, help="chunks per block (default: the layer's)")
    parser.add_argument("--checkpoint", action="store_true", help="recompute blocks in the backward pass (less memory, slower)")
    parser.add_argument("--forget-target", default=None, choices=["init", "zero"],
                        help="the layer's forgetting target (default: the layer's, towards W_0); zero: the "
                             "paper's literal forgetting, one product less per read (to measure what W_0 costs)")
    parser.add_argument("--naive-length", type=int, default=256, help="0: skip the naive comparison and FLOP count")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "baseline":
        print(json.dumps(baseline_worker(args)))
        return
    if args.worker is not None:
        args.worker = int(args.worker)
        print(json.dumps(worker(args)))
        return

    if args.dim % args.heads:
        parser.error(f"--heads {args.heads} must divide --dim {args.dim}")
    precision = "float32" if args.autocast == "none" else f"{args.autocast} autocast (inner loop float32)"
    print(f"NeuralMemory forward+backward: dim {args.dim}, {args.heads} head(s), MLP memory depth 2 x4, "
          f"chunk {args.chunk}, batch {args.batch}, {precision}, compile {args.compile}, device {args.device}"
          + (f", forget_target {args.forget_target!r}" if args.forget_target is not None else "")
          + (f", {args.threads} threads" if args.device == "cpu" else "")
          + f", torch {torch.__version__}")
    base = run_worker(args, "baseline", 4, False)["peak_mib"] if args.device == "cpu" else 0.0
    if args.device == "cpu":
        print(f"process baseline (torch + layer, nothing run): {base:.0f} MiB")
    print(f"{'tokens':>8} {'block':>6} {'ckpt':>5} {'tokens/s':>10} {'s/step':>8} {'peak MiB':>9} {'vs 1K':>6} "
          f"{'finite':>6} {'matmul GFLOP/s':>14}")
    first = None
    for seq in [int(s) for s in args.lengths.split(",")]:
        r = run_worker(args, seq, args.block_chunks, args.checkpoint)
        first = first or r["tokens_per_s"]
        print(f"{seq:>8} {args.block_chunks or 'dflt':>6} {args.checkpoint!s:>5} {r['tokens_per_s']:>10,.0f} "
              f"{r['seconds']:>8.2f} {r['peak_mib']:>9,.0f} {r['tokens_per_s'] / first:>6.2f} {r['finite']!s:>6} "
              f"{r['matmul_gflops']:>14,.0f}")
    if args.compile != "none" or args.autocast != "none" or args.naive_length == 0:
        return  # the lines below compare eager float32 paths
    _setup(args.device, args.threads)
    naive, par = naive_vs_parallel(args, args.naive_length)
    print(f"memorize vs memorize_naive at {args.naive_length} tokens (fwd+bwd): "
          f"{naive:.2f} s vs {par:.3f} s = {naive / par:,.0f}x")
    flops, achieved, matmul = flops_and_matmul_rate(args, 1024)
    print(f"at 1024 tokens: {flops / 2048 / 1e6:.1f} MFLOP per token (torch's count), {achieved:.0f} GFLOP/s "
          f"achieved; plain 2048^3 matmul: {matmul:.0f} GFLOP/s ({achieved / matmul:.0%})")


if __name__ == "__main__":
    main()
