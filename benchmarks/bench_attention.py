"""Sliding-window attention: time and peak memory against sequence length, and dense SDPA.

Usage::

    python benchmarks/bench_attention.py [--device cpu|cuda] [--backends blocked,sdpa]
                                         [--grad] [--repeats 5]

Each measurement runs in a fresh subprocess, so that the CPU peak memory is that process's
resident-set high-water mark (``resource.getrusage``) and no measurement inherits another's
allocations; on CUDA it is ``torch.cuda.max_memory_allocated``. Settings: batch 1, 4 heads,
dim_head 64, window 256, float32, 2 threads on the CPU. Times are the best of ``--repeats``
forwards after one warm-up (the median is printed beside it: on a shared machine the best is
the least disturbed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HEADS, DIM_HEAD, WINDOW, BATCH = 4, 64, 256, 1
LENGTHS = (2048, 4096, 8192, 16384)


def worker(device: str, backend: str, seq: int, repeats: int, grad: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from memory_blocks.functional.attention import sliding_window_attention

    torch.set_num_threads(2)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(BATCH, HEADS, seq, DIM_HEAD, generator=g).to(dev).requires_grad_(grad)
        for _ in range(3)
    )

    finite = [True]

    def run() -> None:
        if backend == "causal_sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = sliding_window_attention(q, k, v, window=WINDOW, backend=backend)
        if grad:
            out.sum().backward()
        ok = bool(torch.isfinite(out).all()) and all(
            t.grad is None or bool(torch.isfinite(t.grad).all()) for t in (q, k, v)
        )
        finite[0] = finite[0] and ok

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    with torch.set_grad_enabled(grad):
        run()
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
    result = {
        "seq": seq,
        "backend": backend,
        "best_s": min(times),
        "median_s": statistics.median(times),
        "finite": finite[0],  # outputs (and gradients) of every timed step
    }
    if dev.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["extra_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        result["peak_mb"] = peak_kb / 1024
        result["extra_mb"] = (peak_kb - baseline_kb) / 1024
    return result


def measure(device: str, backend: str, seq: int, repeats: int, grad: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, str(seq), "--device", device,
           "--repeats", str(repeats)] + (["--grad"] if grad else [])
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backends", default="blocked", help="comma-separated SWA backends")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grad", action="store_true", help="time forward + backward")
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, seq = args.worker
        print(json.dumps(worker(args.device, backend, int(seq), args.repeats, args.grad)))
        return

    what = "forward + backward" if args.grad else "forward"
    print(f"# {what}, batch {BATCH}, heads {HEADS}, dim_head {DIM_HEAD}, window {WINDOW}, "
          f"float32, device {args.device}" + (", 2 threads" if args.device == "cpu" else ""))
    memory = "peak RSS MB" if args.device == "cpu" else "peak alloc MB"
    header = (f"| backend | seq | ms (best) | ms (median) | tokens/s | {memory} | "
              f"above inputs MB | time / time(2K) | finite |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    best = {}
    for backend in args.backends.split(","):
        for seq in LENGTHS:
            r = measure(args.device, backend, seq, args.repeats, args.grad)
            best[(backend, seq)] = r["best_s"]
            ratio = r["best_s"] / best[(backend, LENGTHS[0])]
            print(f"| {backend} | {seq} | {r['best_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} | "
                  f"{seq / r['best_s']:,.0f} | {r['peak_mb']:.0f} | {r['extra_mb']:.0f} | "
                  f"{ratio:.2f} | {r['finite']} |", flush=True)
    seq = LENGTHS[-1]
    r = measure(args.device, "causal_sdpa", seq, max(1, min(args.repeats, 3)), args.grad)
    print(f"| dense causal SDPA | {seq} | {r['best_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} | "
          f"{seq / r['best_s']:,.0f} | {r['peak_mb']:.0f} | {r['extra_mb']:.0f} | |")
    for backend in args.backends.split(","):
        print(f"speed-up of {backend} SWA over dense causal SDPA at {seq}: "
              f"{r['best_s'] / best[(backend, seq)]:.1f}x")


if __name__ == "__main__":
    main()
