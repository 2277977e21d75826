"""Training at the defaults: does ``titans train`` stay finite, and does no step slow down?

For each memory variant (mac, mag, mal, lmm) and memory depth (2, the default, and 4), trains
``TitansConfig()`` (dim 64, 4 heads, MLP memory, chunk 16; only the depth changed) on MQAR with
``titans train`` and reads its ``metrics.jsonl``: the number of non-finite losses, each step's
seconds (from the cumulative tokens/s the loop records), their median and the slowest step
against it, and the median of the last 50 steps against the first 50 (a lasting slowdown, not a
one-step spike from another process, is what a memory collapsing into subnormal numbers looks
like); a non-finite loss stops ``titans train`` (status 1), which the table reports too.

Run: ``python benchmarks/train_stability.py [--steps 300] [--seq-len 256] [--variants mac,mag]``.
Figures: docs/guides/stability.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def step_seconds(metrics: Path, tokens_per_step: int) -> tuple[list[float], list[float]]:
    """Losses and per-step seconds of a run's training records."""
    losses, elapsed = [], []
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") != "train":
            continue
        losses.append(float(record["loss"]) if record["loss"] is not None else math.nan)
        elapsed.append(tokens_per_step * record["step"] / record["tokens_per_s"])
    seconds = [b - a for a, b in zip([0.0] + elapsed, elapsed)]
    return losses, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", default="mac,mag,mal,lmm")
    parser.add_argument("--depths", default="2,4")
    args = parser.parse_args()
    print(f"titans train --task mqar --steps {args.steps} --seq-len {args.seq_len} --batch-size {args.batch_size}, "
          "TitansConfig() defaults")
    print("| variant | memory depth | exit | steps | non-finite losses | first loss | last loss | median step s "
          "| slowest step s | slowest / median | last 50 / first 50 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    titans = Path(sys.executable).with_name("titans")
    for variant in args.variants.split(","):
        for depth in (int(d) for d in args.depths.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "config.json"
                config.write_text(json.dumps({"memory_depth": depth}))
                out = Path(tmp) / "run"
                done = subprocess.run(
                    [str(titans), "train", "--config", str(config), "--variant", variant, "--task", "mqar",
                     "--steps", str(args.steps), "--seq-len", str(args.seq_len),
                     "--batch-size", str(args.batch_size), "--out", str(out), "-q"],
                    capture_output=True, text=True, check=False,
                )
                metrics = out / "metrics.jsonl"
                if not metrics.exists():
                    print(f"| {variant} | {depth} | {done.returncode} | 0 | - | - | - | - | - | - | - |  "
                          f"{done.stderr.strip()[-200:]}", flush=True)
                    continue
                losses, seconds = step_seconds(metrics, args.batch_size * args.seq_len)
            bad = sum(not math.isfinite(v) for v in losses)
            median = statistics.median(seconds[1:]) if len(seconds) > 1 else math.nan  # the first step warms up
            slowest = max(seconds[1:]) if len(seconds) > 1 else math.nan
            # a memory collapsing into subnormal numbers slows down for good, not for one step
            drift = statistics.median(seconds[-50:]) / statistics.median(seconds[1:51]) if len(seconds) > 100 else math.nan
            print(f"| {variant} | {depth} | {done.returncode} | {len(losses)} | {bad} | {losses[0]:.3f} | "
                  f"{losses[-1]:.3f} | {median:.3f} | {slowest:.3f} | {slowest / median:.2f} | {drift:.2f} |", flush=True)


if __name__ == "__main__":
    main()
