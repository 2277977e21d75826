"""Titans variants against the ``swa`` and ``transformer`` baselines: training and generation.

Usage::

    python benchmarks/bench_models.py [--device cpu|cuda] [--threads 2]
                                      [--variants mac,mag,mal,lmm,swa,transformer]
                                      [--contexts 1024,32768] [--train-seq 512] [--repeats 3]
    # the 170m shape on a GPU (issue: GPU speed), bf16 autocast, compiled:
    python benchmarks/bench_models.py --device cuda --preset 170m --train-seq 4096,16384 \
        --batch 8 --autocast bf16 --compile default --contexts 4096

Without ``--preset``, one small config for every variant (dim 128, 2 blocks, 4 heads,
vocabulary 256, memory: 2-layer MLP x4, chunk 16; window 256; MAC segments of 64 with 64 memory
tokens; 4 persistent tokens); with it, that preset's shape (``TitansConfig.preset``). Float32
unless ``--autocast``. Every measurement runs in a fresh subprocess, so that the CPU peak memory
is that process's resident-set high-water mark (on CUDA: ``torch.cuda.max_memory_allocated``);
a measurement that fails (out of memory, say) prints its error in its row instead of figures.

- train: one AdamW step (forward + backward) on ``batch x train-seq`` tokens (for every length
  of ``--train-seq``); tokens/s from the best of ``--repeats`` steps after two warm-up steps
  (compilation happens there); ``vs swa``: the ratio to the ``swa`` baseline's tokens/s in the
  same run.
- generate @ context: the context is consumed (no gradients, pieces of 1024 tokens carrying the
  state), then 32 tokens are decoded one at a time with the state; tokens/s of the decode, the
  size of the state (everything carried from token to token) and the peak memory.
  The ``transformer`` baseline's window is the whole context, so its state (KV cache) grows.
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

VARIANTS = ("mac", "mag", "mal", "lmm", "swa", "transformer")
DECODE = 32
PIECE = 1024


def config(variant: str, max_context: int, preset: str | None = None):
    from titans import TitansConfig

    if preset is not None:
        return TitansConfig.preset(preset, variant=variant, max_seq_len=max_context + DECODE + 8)
    return TitansConfig(
        variant=variant, vocab_size=256, dim=128, depth=2, heads=4, memory_expansion=4.0,
        chunk_size=16, window=256, segment_len=64, num_memory_tokens=64, num_persistent=4,
        max_seq_len=max_context + DECODE + 8,
    )


def autocast(device: str, kind: str):
    import contextlib

    import torch

    if kind == "none":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[kind])


def state_bytes(obj, seen: set | None = None) -> int:
    """Bytes of the distinct storages a (nested) state keeps alive."""
    import dataclasses

    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if dataclasses.is_dataclass(obj):
        return sum(state_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(state_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(state_bytes(v, seen) for v in obj)
    return 0


def worker(task: str, variant: str, size: int, args: argparse.Namespace) -> dict:
    import torch

    from titans import TitansLM

    device, repeats = args.device, args.repeats
    torch.set_num_threads(args.threads)
    dev = torch.device(device)
    torch.manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cfg = config(variant, size, args.preset)
    model = TitansLM(cfg).to(dev)
    params = model.num_parameters()
    run = model if args.compile == "none" else torch.compile(model, mode=args.compile)
    g = torch.Generator().manual_seed(0)
    result: dict = {"params": params}
    if task == "train":
        ids = torch.randint(0, cfg.vocab_size, (args.batch, size + 1), generator=g).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        finite = True
        for i in range(repeats + 2):
            sync()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast(device, args.autocast):
                loss = run(ids[:, :-1], labels=ids[:, 1:]).loss
            loss.backward()
            finite = finite and bool(torch.isfinite(loss)) and all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()
            )
            opt.step()
            sync()
            if i > 1:
                times.append(time.perf_counter() - t0)
        result["finite"] = finite  # loss and gradients of every step
        result["tokens_per_s"] = args.batch * size / min(times)
        result["median_tokens_per_s"] = args.batch * size / statistics.median(times)
    else:
        ids = torch.randint(0, cfg.vocab_size, (1, size), generator=g).to(dev)
        with torch.no_grad(), autocast(device, args.autocast):
            state = None
            for start in range(0, size, PIECE):
                state = model(ids[:, start : start + PIECE], state).state
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            token = ids[:, -1:]
            out = model(token, state)  # warm-up step
            sync()
            t0 = time.perf_counter()
            finite = True
            for _ in range(DECODE):  # eager: each decoded token starts inside a memory chunk
                out = model(out.logits[:, -1].argmax(-1, keepdim=True), out.state)
                finite = finite and bool(torch.isfinite(out.logits).all())
            sync()
            result["tokens_per_s"] = DECODE / (time.perf_counter() - t0)
            result["finite"] = finite  # logits of every decoded token
            result["state_mb"] = state_bytes(out.state) / 2**20
    if dev.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def measure(task: str, variant: str, size: int, args: argparse.Namespace) -> dict:
    """One measurement in a fresh process; ``{"error": ...}`` when it fails."""
    cmd = [sys.executable, __file__, "--worker", task, variant, str(size), "--device", args.device,
           "--repeats", str(args.repeats), "--threads", str(args.threads), "--batch", str(args.batch),
           "--autocast", args.autocast, "--compile", args.compile]
    if args.preset is not None:
        cmd += ["--preset", args.preset]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:120]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and OpenMP)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--contexts", default="1024,32768", help="generation contexts, comma-separated")
    parser.add_argument("--train-seq", default="512", help="training lengths, comma-separated")
    parser.add_argument("--batch", type=int, default=2, help="training batch (generation: batch 1)")
    parser.add_argument("--preset", default=None, help="a TitansConfig preset's shape (e.g. 170m) instead of the small config")
    parser.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"],
                        help="autocast the model (the memory's inner loop stays float32)")
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the model for training with this mode (reduce-overhead: CUDA graphs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to one measurement")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, variant, size = args.worker
        print(json.dumps(worker(task, variant, int(size), args)))
        return

    variants = args.variants.split(",")
    contexts = [int(c) for c in args.contexts.split(",") if c]
    lengths = [int(n) for n in args.train_seq.split(",") if n]
    where = f"{args.threads} threads" if args.device == "cpu" else "cuda"
    memory = "peak RSS MB" if args.device == "cpu" else "peak alloc MB"
    shape = f"preset {args.preset}" if args.preset else "dim 128, 2 blocks, 4 heads, vocab 256"
    precision = "float32" if args.autocast == "none" else f"{args.autocast} autocast"
    print(f"# {shape}, {precision}, compile {args.compile}, {args.device} ({where}); "
          f"train: batch {args.batch} x {'/'.join(map(str, lengths))}; generate: {DECODE} tokens after the context")
    header = "| variant | params |"
    for n in lengths:
        header += f" train tok/s @{n} | vs swa @{n} | {memory} @{n} | finite @{n} |"
    for c in contexts:
        header += f" gen tok/s @{c} | vs swa @{c} | state MB @{c} | {memory} @{c} | finite @{c} |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    # swa first: the other rows' ratios refer to it
    order = sorted(variants, key=lambda v: v != "swa")
    reference: dict[tuple[str, int], float] = {}
    rows = {}
    for variant in order:
        params = None
        cells = []
        for task, sizes in (("train", lengths), ("generate", contexts)):
            for n in sizes:
                r = measure(task, variant, n, args)
                if "error" in r:
                    cells.append(f" failed: {r['error']} | - | - | - |" + (" - |" if task == "generate" else ""))
                    continue
                params = r["params"]
                if variant == "swa":
                    reference[(task, n)] = r["tokens_per_s"]
                ratio = r["tokens_per_s"] / reference[(task, n)] if (task, n) in reference else float("nan")
                rate = f"{r['tokens_per_s']:,.0f}" if task == "train" else f"{r['tokens_per_s']:,.1f}"
                state = f" {r['state_mb']:.2f} |" if task == "generate" else ""
                cells.append(f" {rate} | {ratio:.2f} |{state} {r['peak_mb']:,.0f} | {r['finite']} |")
        rows[variant] = f"| {variant} | {params:,} |" if params is not None else f"| {variant} | - |"
        rows[variant] += "".join(cells)
        print(rows[variant], flush=True)  # swa's row first, then the others as measured


if __name__ == "__main__":
    main()
