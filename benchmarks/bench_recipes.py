"""Speed of each memory recipe's layer (NeuralMemory forward + backward) against Titans' default.

The shape of ``bench_memory.py``: dim 256, one memory head, a 2-layer MLP memory with expansion
4, chunk 16, batch 2, float32, 2 threads. Each recipe's layer is the one
``titans.builders.build_memory`` makes from ``TitansConfig.from_recipe(name)`` at that shape, at
its defaults (learned gates as initialised). Every row runs in its own process, after one warm-up
step; the ratio column is the Titans row's tokens/s (same run) over the row's: the issue's target is
at most 3x. A row whose
outputs or gradients are not all finite gets no figure (``--`` and ``finite: no``).

    python benchmarks/bench_recipes.py                       # the table of docs/benchmarks.md
    python benchmarks/bench_recipes.py --lengths 1024 --recipes titans,atlas
    python benchmarks/bench_recipes.py --lengths 1024 --recipes titans,moneta,moneta:token
    python benchmarks/bench_recipes.py --rounds 3          # median of 3 interleaved rounds
    python benchmarks/bench_recipes.py --paired --repeats 4 --lengths 1024 --recipes memora

On a shared or noisy machine the speed drifts by more than the differences between rows over
the minutes a table takes. ``--rounds R`` runs every row R times, round after round (Titans
first in each), and reports the median tokens/s of each row and the median and range of its
per-round ratio to the Titans row of the same round. ``--paired`` puts the Titans layer and the
recipe's layer in one process and alternates their steps (``--repeats`` recipe steps between
``--repeats + 1`` Titans steps): each ratio compares steps taken seconds apart, and the table
gives the median and range of all of them (the Titans row: the median of its best step per
process; a row is finite only when both layers were at every step).

A row ``NAME:token`` (or ``NAME:chunk``) is the recipe with that ``retention_readout``: Moneta and
Memora read their retention per chunk (the dual form); ``:token`` is the per-token rule.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

RECIPE_ORDER = ("titans", "moneta", "yaad", "memora", "atlas")


def _layer(args: argparse.Namespace, recipe: str):  # noqa: ANN202
    from titans.builders import build_memory
    from titans.config import TitansConfig

    name, _, readout = recipe.partition(":")
    extra = {"retention_readout": readout} if readout else {}
    torch.manual_seed(0)
    config = TitansConfig.from_recipe(
        name, dim=args.dim, heads=1, memory_heads=1, chunk_size=args.chunk, memory_depth=2,
        memory_expansion=4.0, **extra,
    )
    return build_memory(config)


def _stepper(layer: torch.nn.Module, x: torch.Tensor):  # noqa: ANN202
    """``step()``: one forward + backward of ``layer`` on ``x``; returns (finite, seconds)."""

    def step() -> tuple[bool, float]:
        start = time.perf_counter()
        layer.zero_grad(set_to_none=True)
        y, _ = layer(x)
        y.square().mean().backward()
        seconds = time.perf_counter() - start
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        return bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(g).all()) for g in grads), seconds

    return step


def worker(args: argparse.Namespace) -> dict:
    """One row: tokens/s of forward + backward, and whether outputs and gradients are finite.

    With ``--paired`` the Titans layer lives in the same process and its steps alternate with
    the recipe's (Titans first and last): each recipe step's ratio is taken against the mean of
    the two Titans steps around it, so that a drift of the machine moves both alike."""
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, args.worker_length, args.dim, generator=torch.Generator().manual_seed(1))
    step = _stepper(_layer(args, args.worker_recipe), x)
    tokens = args.batch * args.worker_length
    if not args.paired:
        finite, _ = step()  # warm-up
        times = []
        for _ in range(args.repeats):
            ok, seconds = step()
            finite = finite and ok
            times.append(seconds)
        return {"recipe": args.worker_recipe, "length": args.worker_length, "finite": finite,
                "tokens_per_s": tokens / min(times) if finite else None}
    base = _stepper(_layer(args, "titans"), x)
    base_finite, _ = base()  # warm-ups
    finite, _ = step()
    ok, seconds = base()
    base_finite, base_times, times = base_finite and ok, [seconds], []
    for _ in range(args.repeats):
        ok, seconds = step()
        finite = finite and ok
        times.append(seconds)
        ok, seconds = base()
        base_finite = base_finite and ok
        base_times.append(seconds)
    ratios = [t / ((a + b) / 2) for t, a, b in zip(times, base_times, base_times[1:])]
    # a ratio needs both layers finite at every step
    return {"recipe": args.worker_recipe, "length": args.worker_length, "finite": finite and base_finite,
            "tokens_per_s": tokens / min(times) if finite else None,
            "titans_finite": base_finite, "titans_tokens_per_s": tokens / min(base_times) if base_finite else None,
            "ratios": ratios if finite and base_finite else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every row this many times, interleaved; report medians (see above)")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--recipes", default=",".join(RECIPE_ORDER))
    parser.add_argument("--row-timeout", type=float, default=600.0,
                        help="seconds a row may take (warm-up and repeats); a slower row reports '> N s'")
    parser.add_argument("--paired", action="store_true",
                        help="each recipe's row in one process with the Titans layer, steps alternating (see above)")
    parser.add_argument("--worker-recipe", help=argparse.SUPPRESS)
    parser.add_argument("--worker-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_recipe is not None:
        print(json.dumps(worker(args)))
        return
    recipes = args.recipes.split(",")
    if recipes[0] != "titans":
        recipes = ["titans", *[r for r in recipes if r != "titans"]]
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.paired:
        recipes = [r for r in recipes if r != "titans"]
    rounds = [_round(args, recipes, lengths) for _ in range(args.rounds)]
    print(f"dim {args.dim}, one head, MLP memory (2 layers, x4), chunk {args.chunk}, batch {args.batch}, "
          f"{args.threads} threads, forward + backward, {args.rounds} round(s)"
          + (f", paired with Titans in one process ({args.repeats} alternating steps)" if args.paired else ""))
    print()
    print("| recipe | tokens | tokens/s | titans / recipe | finite (outputs, grads) |")
    print("|---|---:|---:|---:|---|")
    for length in lengths:
        if args.paired:
            paired = [r for rows in rounds for r in rows.values() if r["length"] == length and "titans_finite" in r]
            titans = [r["titans_tokens_per_s"] for r in paired if r["titans_finite"]]
            speed = f"{statistics.median(titans):,.0f}" if titans else "--"
            finite = "yes" if paired and all(r["titans_finite"] for r in paired) else "no"
            print(f"| titans (paired runs) | {length} | {speed} | 1.00x | {finite} |")
        for recipe in recipes:
            runs = [rows[(recipe, length)] for rows in rounds]
            bases = [None if args.paired else rows[("titans", length)]["tokens_per_s"] for rows in rounds]
            print(_table_row(args, recipe, length, runs, bases))


def _round(args: argparse.Namespace, recipes: list[str], lengths: list[int]) -> dict[tuple[str, int], dict]:
    """Every row once, each in its own process: ``(recipe, length) -> the worker's result``
    (``finite`` ``None`` when the row timed out)."""
    rows = {}
    for length in lengths:
        for recipe in recipes:
            cmd = [sys.executable, __file__, "--worker-recipe", recipe, "--worker-length", str(length)]
            for flag in ("dim", "chunk", "batch", "threads", "repeats"):
                cmd += [f"--{flag}", str(getattr(args, flag))]
            if args.paired:
                cmd.append("--paired")
            try:
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.row_timeout).stdout
            except subprocess.TimeoutExpired:
                rows[(recipe, length)] = {"recipe": recipe, "length": length, "finite": None, "tokens_per_s": None}
                continue
            rows[(recipe, length)] = json.loads(out.strip().splitlines()[-1])
    return rows


def _table_row(
    args: argparse.Namespace, recipe: str, length: int, runs: list[dict], bases: list[float | None]
) -> str:
    """One line of the table from a row's rounds and the Titans rows of the same rounds."""
    if any(r["finite"] is None for r in runs):  # timed out: an upper bound on the speed, nothing measured
        bound = (1 + args.repeats) * args.batch * length / args.row_timeout
        return f"| {recipe} | {length} | < {bound:,.1f} (timed out) | -- | not measured |"
    finite = all(r["finite"] for r in runs)
    speeds = [r["tokens_per_s"] for r in runs]
    if not finite or any(t is None for t in speeds):
        return f"| {recipe} | {length} | -- | -- | no |"
    speed = f"{statistics.median(speeds):,.0f}"
    if args.paired:  # every alternating step of every round
        ratios = [q for r in runs for q in r["ratios"]]
    else:
        ratios = [b / t for b, t in zip(bases, speeds) if b is not None]
    if not ratios:
        return f"| {recipe} | {length} | {speed} | -- | yes |"
    ratio = f"{statistics.median(ratios):.2f}x slower"
    if len(ratios) > 1:
        ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
    return f"| {recipe} | {length} | {speed} | {ratio} | yes |"


if __name__ == "__main__":
    main()
