"""MAC's open decisions, one at a time, against MAG and sliding-window attention (``swa``).

Every run trains the same small model (2 blocks, width 64, window = segment = 16, a linear
memory at chunk 16 with the stable default update) on one synthetic recall task with one
budget, then measures recall at the training length and at 4x it. The runs:

- ``mac-paper``: MAC as first built, one literal reading of eqs. 21-25: the memory writes the
  attention output ``y`` and reads ``M*(y)``; ``o = y * M*(y)``; ``N_l = segment`` memory
  tokens at positions before the segment; the retrieval shares the memory's query projection.
- ``mac-base``: the memory writes the segment's normalised inputs, a normalised gate
  (``RMSNorm(y) * sigmoid(RMSNorm(m))``), ``N_l = segment``; then one row per decision, each
  changing one field of ``mac-base``: ``write=attention``, ``combine=product``/``sigmoid``,
  ``N_l=4``/``0``, ``visibility=own`` (token ``r`` sees its own retrieval only),
  ``positions=aligned``, ``query=separate``, ``persistent=0``, and (round 2) how the memory
  tokens enter the attention: ``memory_norm=rms``/``rms_zero`` (RMS-normalised, a learned gain
  from 1 / 0) and ``memory_norm=gain`` (a learned per-feature gain from 1). The table
  marks the row that is MAC at ``TitansConfig``'s defaults (``mac-default`` is added if none is).
- ``mag``, ``mal``, ``lmm``: the other variants in the same model with their forgetting gate as it
  was before round 6 (no ceiling: ``decay_gate_max=1.0``; ``mag`` is MAG at its defaults of
  rounds 1-5), and ``mag.decay_max=1e-3`` etc. with MAC's ceiling (their defaults since round 6);
  ``swa`` (sliding-window attention, SwiGLU widened to the MAC model's parameter count).

Tasks: ``mqar`` (4 key-value pairs, each key queried once at a power-law distance, most beyond
the 16-token window) and ``needle`` (one key-value needle at a random depth, asked for at the
end; recall is the mean over the depths 0, 0.25, 0.5, 0.75 and 1 of the haystack). Each (task, seed) is an ablation run by :func:`titans.experiments.ablation.run_one` into
``OUT/TASK-seedS/runs/NAME`` (a finished run is reused, so the script can be re-run to print
the table). Recall is ``None`` (printed ``n/f``) where a model's outputs were not finite.

Run: ``python benchmarks/mac_ablation.py --tasks mqar,needle --seeds 0,1 --out runs/mac_ablation
[--jobs 2] [--steps 1000] [--only mac,mag]``. Figures: docs/guides/mac_ablation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _finite import run_is_finite
from _jobs import run_parallel

from titans import TitansConfig
from titans.experiments.ablation import AblationSpec, RunSpec, equal_size_baseline, run_one
from titans.experiments.tasks import MQAR, NeedleInHaystack
from titans.experiments.train import METRICS_NAME, TrainConfig

MODEL = dict(vocab_size=64, dim=64, depth=2, heads=2, ffn_hidden=128, window=16, segment_len=16, num_persistent=4,
             chunk_size=16, memory_model="linear", max_seq_len=2048)
#: The ablation's base: the memory writes the segment's inputs, a normalised gate, N_l = segment,
#: the memory tokens as retrieved.
BASE = dict(mac_write="input", combine="normalized", num_memory_tokens=None, mac_memory_positions="prefix",
            mac_retrieve_query="shared", mac_memory_norm="none", num_persistent=4, decay_gate_max=1.0)
#: MAC as first built: one literal reading of eqs. 23-25.
PAPER = {**BASE, "mac_write": "attention", "combine": "product"}
#: One decision changed at a time from the base.
CHANGES = {
    "write=attention": dict(mac_write="attention"),
    "combine=product": dict(combine="product"),
    "combine=sigmoid": dict(combine="sigmoid"),
    "N_l=4": dict(num_memory_tokens=4),
    "N_l=0": dict(num_memory_tokens=0),
    "visibility=own": dict(mac_memory_visibility="own"),
    "positions=aligned": dict(mac_memory_positions="aligned"),
    "query=separate": dict(mac_retrieve_query="separate"),
    "persistent=0": dict(num_persistent=0),
    "memory_norm=rms": dict(mac_memory_norm="rms"),
    "memory_norm=rms_zero": dict(mac_memory_norm="rms_zero"),
    "memory_norm=gain": dict(mac_memory_norm="gain"),
    "decay=none": dict(decay_gate=None, decay_gate_max=None),
    "decay_max=1e-3": dict(decay_gate_max=1e-3),
}
TASKS = {
    "mqar": lambda: MQAR(vocab_size=64, num_pairs=4),
    "needle": lambda: NeedleInHaystack(vocab_size=64),
}


def runs() -> list[RunSpec]:
    """The runs; ``mac-default`` (MAC at ``TitansConfig``'s defaults) only where it differs from
    every other run (the table marks the run that equals the defaults)."""
    base = TitansConfig(variant="mac", **{**MODEL, **BASE})
    out = [RunSpec("mac-paper", TitansConfig(variant="mac", **{**MODEL, **PAPER})), RunSpec("mac-base", base)]
    out += [RunSpec(f"mac-base.{name}", dataclasses.replace(base, **change)) for name, change in CHANGES.items()]
    default = mac_default()
    if all(run.model != default for run in out):
        out.append(RunSpec("mac-default", default))
    # The other variants with their forgetting as it ran before round 6 (no ceiling) and with
    # MAC's ceiling.
    out += [RunSpec(f"{v}{tag}", TitansConfig(variant=v, **MODEL, decay_gate_max=ceiling))
            for v in ("mag", "mal", "lmm") for tag, ceiling in (("", 1.0), (".decay_max=1e-3", 1e-3))]
    out.append(RunSpec("swa", equal_size_baseline(base)))
    return out


def label(run: RunSpec) -> str:
    """The run's name, marked where it is MAC at the current defaults."""
    return f"**{run.name}** (defaults)" if run.model == mac_default() else run.name


def mac_default() -> TitansConfig:
    """MAC at ``TitansConfig``'s defaults in the ablation's model, its gate named as the runs name it."""
    default = TitansConfig(variant="mac", **MODEL)
    return dataclasses.replace(default, combine=default.resolved_combine, decay_gate_max=default.resolved_decay_gate_max)


def spec(task: str, seed: int, steps: int) -> AblationSpec:
    train = TrainConfig(steps=steps, batch_size=16, seq_len=128, lr=1e-2, warmup=steps // 10,
                        log_every=50, seed=seed)
    return AblationSpec(task=TASKS[task](), train=train, lengths=(128, 512), runs=tuple(runs()),
                        eval_batches=4, eval_batch_size=16, eval_seed=1000 + seed)


def work(task: str, seed: int, steps: int, name: str, out: Path) -> dict:
    s = spec(task, seed, steps)
    run = next(r for r in s.runs if r.name == name)
    return run_one(run, s, out / f"{task}-seed{seed}" / "runs" / name)


def steps_to(metrics: Path, level: float = 0.9, window: int = 50) -> int | None:
    """The first step at which the mean training accuracy of the last ``window`` steps reaches
    ``level`` (how fast a run learns: runs that end at 100% differ here); ``None``: never."""
    accs = [r["accuracy"] for r in map(json.loads, metrics.read_text().splitlines()) if r.get("kind") == "train"]
    for end in range(window, len(accs) + 1):
        if statistics.fmean(accs[end - window : end]) >= level:
            return end
    return None


def mean_by_length(rows: list[dict]) -> dict[int, float | None]:
    """Recall per length, averaged over the needle's depths (one row per length for MQAR);
    ``None`` where any row has no recall (non-finite outputs)."""
    out: dict[int, list] = {}
    for row in rows:
        out.setdefault(row["length"], []).append(row["accuracy"])
    return {n: None if None in v else statistics.fmean(v) for n, v in out.items()}


def percent(value: float | None) -> str:
    return "n/f" if value is None else f"{100 * value:.1f}"


def table(results: dict[tuple[str, int, str], dict], tasks: list[str], seeds: list[int], names: list[str],
          out: Path) -> str:
    lines, labels = [], {run.name: label(run) for run in runs()}
    for task in tasks:
        lines += [f"\n{task}: recall (%) at 128 (training length) and 512 tokens, per seed; mean; "
                  "steps until the training accuracy (mean of 50 steps) reached 90%, per seed; finite",
                  "| run | parameters | " + " | ".join(f"seed {s} @128 / @512" for s in seeds)
                  + " | mean @128 | mean @512 | steps to 90% | finite |",
                  "|---|---|" + "---|" * len(seeds) + "---|---|---|---|"]
        for name in names:
            rows = [results.get((task, s, name)) for s in seeds]
            if any(r is None for r in rows):
                continue
            cells, means, finite = [], {128: [], 512: []}, True
            for seed, r in zip(seeds, rows):
                accs = mean_by_length(r["eval"])
                finite = finite and run_is_finite(r, out / f"{task}-seed{seed}" / "runs" / name)
                cells.append(f"{percent(accs[128])} / {percent(accs[512])}")
                for n in means:
                    means[n].append(accs[n])
            mean = {n: None if None in v else statistics.fmean(v) for n, v in means.items()}
            speed = [steps_to(out / f"{task}-seed{s}" / "runs" / name / METRICS_NAME) for s in seeds]
            speed_cells = " / ".join("never" if n is None else str(n) for n in speed)
            lines.append(f"| {labels[name]} | {rows[0]['parameters']:,} | " + " | ".join(cells)
                         + f" | {percent(mean[128])} | {percent(mean[512])} | {speed_cells} | {'yes' if finite else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mqar,needle")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/mac_ablation"))
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "SEED", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    names = [r.name for r in runs()]
    only = [n for n in args.only.split(",") if n] or names
    unknown = sorted(set(tasks) - set(TASKS)) + sorted(set(only) - set(names))
    if unknown:
        parser.error(f"unknown tasks or runs: {unknown}; tasks {sorted(TASKS)}, runs {names}")
    if args.worker:
        torch.set_num_threads(1)
        task, seed, name = args.worker
        work(task, int(seed), args.steps, name, args.out)
        return
    torch.set_num_threads(max(1, 2 // args.jobs))
    todo = [(t, s, n) for t in tasks for s in seeds for n in only]
    began = time.perf_counter()
    if args.jobs > 1:  # one process per run
        run_parallel([[sys.executable, __file__, "--worker", t, str(s), n, "--steps", str(args.steps),
                       "--out", str(args.out)] for t, s, n in todo], args.jobs)
    results = {(t, s, n): work(t, s, args.steps, n, args.out) for t, s, n in todo}
    print(f"MAC ablation: {args.steps} steps of 16 x 128 tokens per run, lr 1e-2; "
          f"{time.perf_counter() - began:.0f} s")
    print(table(results, tasks, seeds, [n for n in names if n in only], args.out))
    (args.out / "table.json").write_text(json.dumps(
        {f"{t}/{s}/{n}": {k: v for k, v in r.items() if k != "identity"} for (t, s, n), r in results.items()},
        indent=1))


if __name__ == "__main__":
    main()
