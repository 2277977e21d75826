"""Bits per byte on real text: a small MAG model against sliding-window attention of its size.

The text is the Python standard library's own source (by default its ``asyncio`` package, about
490 KB of ``*.py`` files that nobody in this project wrote, present wherever Python is), read as
bytes by :class:`titans.experiments.tasks.TextTask`; its last 10% is held out, and every evaluation is on
held-out windows. Both models: 2 blocks, dim 64, 2 heads, window 32, vocabulary 256 (bytes);
MAG has the default memory (2-layer MLP, chunk 16); ``swa`` is widened to the same parameter
count (:func:`titans.experiments.ablation.equal_size_baseline`). Equal steps and batches; bits per byte at
the training length and at 4x it. A run whose loss, weights or evaluation is not finite is
reported as such, never as a figure.

Run: ``python benchmarks/text_bpb.py [--steps 300] [--data DIR] [--pattern '*.py'] [--jobs 2]
[--out runs/text_bpb]``. Figures: docs/training.md ("Your own text").
"""

from __future__ import annotations

import argparse
import math
import sys
import sysconfig
import time
from pathlib import Path

from _finite import run_is_finite
from _jobs import train_runs

from titans.experiments.ablation import AblationSpec, RunSpec, equal_size_baseline, run_one
from titans.config import TitansConfig
from titans.experiments.tasks import TextTask, bits_per_byte
from titans.experiments.train import TrainConfig

TRAIN_LEN = 256
LENGTHS = (TRAIN_LEN, 4 * TRAIN_LEN)
MODEL = dict(vocab_size=256, dim=64, depth=2, heads=2, window=32, max_seq_len=4 * TRAIN_LEN)


def runs() -> tuple[RunSpec, ...]:
    mag = TitansConfig(variant="mag", **MODEL)
    return RunSpec("mag", mag), RunSpec("swa", equal_size_baseline(mag))


def spec(args: argparse.Namespace) -> AblationSpec:
    task = TextTask(str(args.data), pattern=args.pattern)
    train = TrainConfig(steps=args.steps, batch_size=8, seq_len=TRAIN_LEN, lr=3e-3, warmup=args.steps // 10,
                        log_every=50, seed=args.seed)
    return AblationSpec(task=task, train=train, lengths=LENGTHS, runs=runs(), eval_batches=8, eval_batch_size=8,
                        eval_seed=1000 + args.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path(sysconfig.get_paths()["stdlib"]) / "asyncio")
    parser.add_argument("--pattern", default="*.py")
    parser.add_argument("--out", type=Path, default=Path("runs/text_bpb"))
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = spec(args)
    began = time.perf_counter()
    if train_runs(s, [r.name for r in s.runs], args.out, jobs=args.jobs, worker=args.worker,
                  argv=lambda name: [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--seed",
                                     str(args.seed), "--data", str(args.data), "--pattern", args.pattern,
                                     "--out", str(args.out)]):
        return
    corpus = len(s.task.tokens()) + len(s.task.for_evaluation().tokens())
    print(f"text: {s.task.data} ({args.pattern}, {corpus:,} bytes, last 10% held out); {args.steps} steps of "
          f"8 x {TRAIN_LEN} bytes, seed {args.seed}; {time.perf_counter() - began:.0f} s")
    print(f"| run | parameters | final train loss | bits/byte @{LENGTHS[0]} | bits/byte @{LENGTHS[1]} "
          "| next-byte accuracy @256 | train tokens/s | finite |")
    print("|---|---|---|---|---|---|---|---|")
    for run in s.runs:
        r = run_one(run, s, args.out / "runs" / run.name)
        rows = {e["length"]: e for e in r["eval"]}
        finite = run_is_finite(r, args.out / "runs" / run.name)
        bpb = ["n/f" if not rows[n]["finite"] else f"{bits_per_byte(rows[n]['loss']):.3f}" for n in LENGTHS]
        accuracy = rows[LENGTHS[0]]["accuracy"]
        loss = "n/f" if r["loss"] is None or not math.isfinite(r["loss"]) else f"{r['loss']:.3f}"
        speed = "n/f" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
        print(f"| {run.name} | {r['parameters']:,} | {loss} | {bpb[0]} | {bpb[1]} | "
              f"{'n/f' if accuracy is None else f'{100 * accuracy:.1f}%'} | {speed} | {'yes' if finite else 'NO'} |")


if __name__ == "__main__":
    main()
