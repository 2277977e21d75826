"""Titans variants against the ``swa`` and ``transformer`` baselines: training and generation.

Usage::

    python benchmarks/bench_models.py [--device cpu|cuda] [--threads 2]
                                      [--variants mac,mag,mal,lmm,swa,transformer]
                                      [--contexts 1024,32768] [--train-seq 512] [--repeats 3]

One small config for every variant (dim 128, 2 blocks, 4 heads, vocabulary 256, memory: 2-layer
MLP x4, chunk 16; window 256; MAC segments of 64 with 64 memory tokens; 4 persistent tokens;
float32). Every measurement runs in a fresh subprocess, so that the CPU peak memory is that
process's resident-set high-water mark (on CUDA: ``torch.cuda.max_memory_allocated``).

- train: one AdamW step (forward + backward) on ``batch 2 x train-seq`` tokens; tokens/s from
  the best of ``--repeats`` steps after a warm-up.
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


def config(variant: str, max_context: int):
    from titans import TitansConfig

    return TitansConfig(
        variant=variant, vocab_size=256, dim=128, depth=2, heads=4, memory_expansion=4.0,
        chunk_size=16, window=256, segment_len=64, num_memory_tokens=64, num_persistent=4,
        max_seq_len=max_context + DECODE + 8,
    )


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


def worker(task: str, variant: str, size: int, device: str, repeats: int, threads: int) -> dict:
    import torch

    from titans import TitansLM

    torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cfg = config(variant, size if task == "generate" else 1024)
    model = TitansLM(cfg).to(dev)
    params = model.num_parameters()
    g = torch.Generator().manual_seed(0)
    result: dict = {"params": params}
    if task == "train":
        ids = torch.randint(0, cfg.vocab_size, (2, size + 1), generator=g).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        finite = True
        for i in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = model(ids[:, :-1], labels=ids[:, 1:]).loss
            loss.backward()
            finite = finite and bool(torch.isfinite(loss)) and all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()
            )
            opt.step()
            sync()
            if i:
                times.append(time.perf_counter() - t0)
        result["finite"] = finite  # loss and gradients of every timed step
        result["tokens_per_s"] = 2 * size / min(times)
        result["median_tokens_per_s"] = 2 * size / statistics.median(times)
    else:
        ids = torch.randint(0, cfg.vocab_size, (1, size), generator=g).to(dev)
        with torch.no_grad():
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
            for _ in range(DECODE):
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
    cmd = [sys.executable, __file__, "--worker", task, variant, str(size), "--device", args.device,
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and OpenMP)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--contexts", default="1024,32768", help="generation contexts, comma-separated")
    parser.add_argument("--train-seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, variant, size = args.worker
        print(json.dumps(worker(task, variant, int(size), args.device, args.repeats, args.threads)))
        return

    variants = args.variants.split(",")
    contexts = [int(c) for c in args.contexts.split(",")]
    where = f"{args.threads} threads" if args.device == "cpu" else "cuda"
    memory = "peak RSS MB" if args.device == "cpu" else "peak alloc MB"
    print(f"# dim 128, 2 blocks, 4 heads, vocab 256, float32, {args.device} ({where}); "
          f"train: batch 2 x {args.train_seq}; generate: {DECODE} tokens after the context")
    header = f"| variant | params | train tok/s | train {memory} | train finite |"
    for c in contexts:
        header += f" gen tok/s @{c} | state MB @{c} | {memory} @{c} | finite @{c} |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for variant in variants:
        t = measure("train", variant, args.train_seq, args)
        row = f"| {variant} | {t['params']:,} | {t['tokens_per_s']:,.0f} | {t['peak_mb']:.0f} | {t['finite']} |"
        for c in contexts:
            g = measure("generate", variant, c, args)
            row += f" {g['tokens_per_s']:,.1f} | {g['state_mb']:.2f} | {g['peak_mb']:.0f} | {g['finite']} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
