"""How much of a trained model's recall beyond its training length its forgetting gate costs.

Loads trained checkpoints (``TitansLM.from_pretrained``) and evaluates each on its recall task
with the learned forgetting ``alpha`` of every memory layer multiplied by each ``--scales``
value (1: the model as trained; 0: no forgetting at test time; nothing else changes). Prints
the median ``alpha`` of each memory layer on one evaluation batch at the longest length, and the
recall per length (the needle task: per depth, and their mean). A row whose outputs are not
finite is printed ``n/f``, never as a recall.

Run: ``python benchmarks/forgetting_probe.py CHECKPOINT... [--task needle|mqar]
[--lengths 128,512] [--scales 1,0] [--batches 4] [--batch-size 16] [--seed 1000]``.
Figures: docs/guides/mac_ablation.md (round 5).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from memory_blocks import NeuralMemory
from titans import TitansLM
from titans.experiments.evaluate import eval_generator, evaluate
from titans.experiments.tasks import MQAR, NeedleInHaystack

TASKS = {"needle": lambda: NeedleInHaystack(vocab_size=64), "mqar": lambda: MQAR(vocab_size=64, num_pairs=4)}


def _memories(model: TitansLM) -> list[NeuralMemory]:
    return [m for m in model.modules() if isinstance(m, NeuralMemory) and m.decay_gate is not None]


@contextlib.contextmanager
def _on_alpha(model: TitansLM, hook: Callable[[int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """``hook(layer index, alpha)`` on every memory's forgetting gate while inside (a returned
    tensor replaces ``alpha``)."""
    handles = [m.decay_gate.register_forward_hook(lambda mod, inp, out, i=i: hook(i, out))
               for i, m in enumerate(_memories(model))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def median_alpha(model: TitansLM, task, seq_len: int, batch_size: int, seed: int) -> list[float]:
    """The median learned ``alpha`` of each memory layer over one evaluation batch."""
    seen: list[list[torch.Tensor]] = [[] for _ in _memories(model)]
    ids, _ = task.batch(eval_generator(seed, 0), batch_size, seq_len)
    with _on_alpha(model, lambda i, alpha: seen[i].append(alpha.detach())), torch.no_grad():
        model(ids)
    return [float(torch.cat([v.flatten() for v in values]).median()) for values in seen]


def probe(model: TitansLM, task, lengths: list[int], scale: float, batches: int, batch_size: int,
          seed: int) -> list[dict]:
    """``evaluate`` rows with every memory's ``alpha`` multiplied by ``scale``."""
    with _on_alpha(model, lambda i, alpha: alpha * scale):
        return evaluate(model, task, lengths, batches=batches, batch_size=batch_size, seed=seed)


def _cell(rows: list[dict]) -> str:
    """Mean recall of the rows (per depth in brackets), or ``n/f`` if any is not finite."""
    if not all(r["finite"] for r in rows):
        return "n/f"
    mean = 100 * statistics.mean(r["accuracy"] for r in rows)
    if len(rows) == 1:
        return f"{mean:.1f}"
    depths = " / ".join(f"{100 * r['accuracy']:.0f}" for r in rows)
    return f"{mean:.1f} ({depths})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--task", default="needle", choices=sorted(TASKS))
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--scales", default="1,0", help="factors of the learned alpha (1: as trained)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1000, help="seed of the evaluation batches")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    task = TASKS[args.task]()
    depth_note = " (mean; per depth 0 / .25 / .5 / .75 / 1)" if args.task == "needle" else ""
    print("| checkpoint | alpha x | median alpha per layer | "
          + " | ".join(f"recall @{n}{depth_note}" for n in lengths) + " |")
    print("|---|---|---|" + "---|" * len(lengths))
    for path in args.checkpoints:
        model = TitansLM.from_pretrained(path)
        alphas = median_alpha(model, task, max(lengths), args.batch_size, args.seed)
        for scale in scales:
            rows = probe(model, task, lengths, scale, args.batches, args.batch_size, args.seed)
            cells = [_cell([r for r in rows if r["length"] == n]) for n in lengths]
            gates = " / ".join(f"{a:.3g}" for a in alphas) or "- (no forgetting)"
            print(f"| {path} | {scale:g} | {gates} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
