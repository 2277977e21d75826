"""``titans demo``: does a neural memory recall what a sliding window cannot see?

Trains a small memory model and a sliding-window-attention (``swa``) baseline of the same size
on associative recall (MQAR with every query at the end of the sequence, so each key-value pair
lies beyond the attention window when it is asked for), then measures recall at several
lengths, including lengths longer than training. Writes ``report.md`` (the table and the
verdict), ``demo.png`` (recall by length and the loss curves) and ``results.json`` into the
output directory, and each run's metrics as JSON lines under ``runs/``.

The memory model is a MAG (paper section 4.2: sliding-window attention and the neural memory in
parallel branches, merged by a gate) whose memory is linear with momentum and forgetting
(eqs. 13-14), updated token by token (chunk size 1). Its attention has the baseline's window,
so the comparison shows what the memory adds, with the same task, budget and evaluation
sequences for both models.

Why a linear memory at chunk size 1: in this budget it recalls best. Under the paper's literal
update the deep (MLP) memory diverged at chunks of 8 or more, and the linear one at chunk 8
diverged on the long runs of filler tokens beyond 1,024 tokens. With the stable defaults
(normalised step, forgetting towards ``W_0``; docs/guides/stability.md) every chunk size stays
finite at every length, but the 2-layer MLP memory at chunk 16 reached only 15% recall after
300 steps in the recall ablation there (the literal update: 5.5%, chance 3.1%), against
near-perfect recall of the linear memory token by token. The memory's learned theta starts at
0.6 (the default step scale's units, ceiling 1; the layer default is 0.3): in the quick demo's
200 steps (its budget then) the default start reached 75% recall, 0.6 reached 98%.

``variant="mac"`` (``titans demo --variant mac``) trains MAC at its defaults as the memory model
instead, against the same baseline (docs/guides/mac_ablation.md has its figures).

``quick=True`` runs the same path with fewer steps and lengths (under two minutes on two
CPU cores for MAG): 250 steps, where the memory model at its defaults has learned the task
(with the forgetting ceiling of every variant since 2026-12-01, 200 steps left MAG at 80.5%
recall, 250 reach 99.2%; docs/training.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titans.experiments.ablation import AblationSpec, RunSpec, equal_size_baseline, metrics_paths, run_ablation
from titans.config import TitansConfig
from titans.experiments.report import accuracy_at, diverged_lengths, markdown_table, plot_results
from titans.experiments.tasks import MQAR
from titans.experiments.tasks.base import check_int
from titans.experiments.train import TrainConfig

__all__ = ["CLEAR_MARGIN", "DEMO_VARIANTS", "DemoSettings", "demo_spec", "run_demo"]

#: The memory variants the demo trains, and how its report describes their blocks.
DEMO_VARIANTS = {
    "mag": "MAG blocks: sliding-window attention (window {window}) and a neural memory in parallel, merged by a gate.",
    "mac": ("MAC blocks: segments of {window} tokens attend to the memory's retrievals and to themselves; "
            "the memory's output then gates the attention output."),
}

#: The recall margin (memory minus baseline) the report calls a clear win.
CLEAR_MARGIN = 0.2


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs (defaults: the full demo; :meth:`quick`: the smoke-test version).

    Args:
        steps: optimizer steps of each model.
        lengths: evaluation lengths; the first is the training length.
        num_pairs: key-value pairs per sequence.
        window: sliding-window size of the baseline (and of any attention in the memory model).
        eval_batches: evaluation batches at each length.
        seed: model initialisation and data.
        variant: the memory model, ``"mag"`` (default) or ``"mac"``; the baseline is the same
            ``swa`` either way.
    """

    steps: int = 400
    lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    num_pairs: int = 4
    window: int = 16
    eval_batches: int = 4
    seed: int = 0
    variant: str = "mag"

    @classmethod
    def quick(cls, variant: str = "mag") -> DemoSettings:
        return cls(steps=250, lengths=(128, 1024), eval_batches=2, variant=variant)

    def __post_init__(self) -> None:
        check_int("DemoSettings", "steps", self.steps, 1)
        if self.variant not in DEMO_VARIANTS:
            raise ValueError(f"DemoSettings.variant: must be one of {tuple(DEMO_VARIANTS)}, got {self.variant!r}")
        if not self.lengths or any(not isinstance(n, int) or n < 4 * self.num_pairs for n in self.lengths):
            raise ValueError(
                f"DemoSettings.lengths: must be integers >= 4 * num_pairs = {4 * self.num_pairs}, got {self.lengths!r}"
            )


_MODEL = dict(vocab_size=64, dim=64, depth=2, heads=2, ffn_hidden=128, chunk_size=1, num_persistent=4,
              memory_model="linear", max_seq_len=2048, lr_gate_init=0.6)


def demo_spec(settings: DemoSettings) -> AblationSpec:
    """The demo as an ablation: the memory model and its equal-size ``swa`` baseline."""
    train_len = settings.lengths[0]
    # MAC's segment is the baseline's window, as MAG's window is.
    memory = TitansConfig(variant=settings.variant, window=settings.window, segment_len=settings.window, **_MODEL)
    baseline = equal_size_baseline(memory)
    task = MQAR(vocab_size=memory.vocab_size, num_pairs=settings.num_pairs, queries_at_end=True)
    train = TrainConfig(steps=settings.steps, batch_size=16, seq_len=train_len, lr=1e-2,
                        warmup=max(1, settings.steps // 10), log_every=25, seed=settings.seed)
    return AblationSpec(task=task, train=train, lengths=tuple(settings.lengths),
                        runs=(RunSpec(f"memory-{settings.variant}", memory), RunSpec("baseline-swa", baseline)),
                        eval_batches=settings.eval_batches, eval_batch_size=16, eval_seed=settings.seed)


def _chance(spec: AblationSpec) -> float:
    """Recall of a guess among the task's values."""
    return spec.task.chance_accuracy()


def _recall(result: dict[str, Any], length: int) -> str:
    accuracy = accuracy_at(result, length)
    return f"diverged at length {length}" if accuracy is None else f"{100 * accuracy:.1f}%"


def _margins(spec: AblationSpec, results: list[dict[str, Any]]) -> dict[int, float | None]:
    """Memory minus baseline recall at each length; ``None`` where either has no accuracy (its
    training diverged, or its evaluation there is non-finite)."""
    memory, baseline = results
    margins: dict[int, float | None] = {}
    for n in spec.lengths:
        ours, theirs = accuracy_at(memory, n), accuracy_at(baseline, n)
        margins[n] = None if ours is None or theirs is None else ours - theirs
    return margins


def _report(spec: AblationSpec, results: list[dict[str, Any]], seconds: float, png: str) -> str:
    memory, baseline = results
    train_len = spec.lengths[0]
    pairs = spec.task.num_pairs
    window = spec.runs[1].model.window
    margins = _margins(spec, results)
    gaps = [
        f"| {n} | {n - 4 * pairs} | {_recall(memory, n)} | {_recall(baseline, n)} | "
        + ("-" if margins[n] is None else f"{100 * margins[n]:+.1f}") + " |"
        for n in spec.lengths
    ]
    clear = [n for n, m in margins.items() if m is not None and m >= CLEAR_MARGIN]
    longer = [n for n in spec.lengths if n > train_len]
    if len(clear) == len(margins):
        found = [m for m in margins.values() if m is not None]
        verdict = (f"The memory model beats the baseline by {100 * min(found):.1f} to "
                   f"{100 * max(found):.1f} points of recall at every length"
                   + (f", including {', '.join(map(str, longer))} (longer than the {train_len} tokens it was trained on)."
                      if longer else "."))
    else:
        weak = [n for n in spec.lengths if n not in clear]
        verdict = (f"The memory model beats the baseline by at least {100 * CLEAR_MARGIN:.0f} points of recall at "
                   f"{', '.join(map(str, clear)) or 'no length'}, but NOT at {', '.join(map(str, weak))}.")
    for r in results:
        if r.get("diverged"):
            verdict += f" {r['name']} diverged in training: it has no recall at any length."
        elif diverged_lengths(r):
            verdict += (f" {r['name']}'s evaluation is non-finite (NaN or infinite) at length "
                        f"{', '.join(map(str, diverged_lengths(r)))}: no recall there.")
    chance = _chance(spec)
    lines = [
        "# titans demo: recall beyond the attention window",
        "",
        f"Task: MQAR with {pairs} key-value pairs at the start and every query at the end, so each pair lies at "
        f"least `length - {4 * pairs}` tokens before its query; vocabulary {spec.task.vocab_size} "
        f"(chance recall {100 * chance:.1f}%). Both models: {spec.train.steps} AdamW steps of {spec.train.batch_size} "
        f"sequences of {train_len} tokens, the same data and evaluation sequences "
        f"({spec.eval_batches} x {spec.eval_batch_size} sequences per length).",
        "",
        f"- **{memory['name']}**: {memory['parameters']:,} parameters; "
        + DEMO_VARIANTS[spec.runs[0].model.variant].format(window=window)
        + f" The memory is linear, with momentum and forgetting (eqs. 13-14), chunk size {spec.runs[0].model.chunk_size}.",
        f"- **{baseline['name']}**: {baseline['parameters']:,} parameters; sliding-window attention, window "
        f"{window} (receptive field of its {spec.runs[1].model.depth} blocks: "
        f"{spec.runs[1].model.depth * (window - 1) + 1} tokens), SwiGLU widened to match the size.",
        "",
        "| length | min. distance pair -> query | memory recall | baseline recall | margin (points) |",
        "|---|---|---|---|---|",
        *gaps,
        "",
        verdict,
        "",
        "## Runs",
        "",
        markdown_table(results),
        f"Wall time of the whole demo: {seconds:.0f} s. Plot: `{png}`. Each run's metrics: "
        "`runs/NAME/metrics.jsonl`.",
        "",
    ]
    return "\n".join(lines)


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    *,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs the demo into ``out_dir``: trains the memory model and the baseline, evaluates, plots, reports.

    Args:
        out_dir: the directory of the runs, ``demo.png`` and ``report.md``.
        settings: the demo's knobs, :class:`DemoSettings` defaults when ``None``.
        progress: ``progress(name, record)`` receives each run's training records, or ``None``.

    Returns:
        ``{"report", "plot", "results", "seconds", "margins"}`` (``margins``: memory minus
        baseline recall at each length, ``None`` where either model has no recall because it
        diverged: see :func:`titans.experiments.report.accuracy_at`).
    """
    settings = DemoSettings() if settings is None else settings
    out = Path(out_dir)
    spec = demo_spec(settings)
    began = time.perf_counter()
    results = run_ablation(spec, out, progress=progress)
    png = plot_results(
        results, out / "demo.png", metrics=metrics_paths(out, results),
        window=settings.window, train_len=spec.lengths[0], chance=_chance(spec),
        title="titans demo: MQAR recall with every query beyond the attention window",
    )
    seconds = time.perf_counter() - began
    report = out / "report.md"
    report.write_text(_report(spec, results, seconds, png.name))
    margins = _margins(spec, results)
    return {"report": str(report), "plot": str(png), "results": results, "seconds": seconds, "margins": margins}
