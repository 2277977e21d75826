"""Reports of ablations and of the demo: a Markdown table and a PNG plot of the run results
that :func:`titans.ablation.run_one` returns.

The plot uses matplotlib's Agg backend (no display needed) and is imported only when a plot
is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["accuracy_at", "diverged_lengths", "loss_text", "markdown_table", "plot_results"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", "-.", ":")


def _row(result: dict[str, Any], length: int) -> dict[str, Any]:
    for row in result["eval"]:
        if row["length"] == length:
            return row
    raise KeyError(f"run {result['name']!r} was not evaluated at length {length}")


def _finite(row: dict[str, Any]) -> bool:
    """Whether an evaluation row holds a real result: a finite loss and an accuracy. A loss may
    be a number, a ``json_safe`` string such as ``"nan"``, or ``None`` (the run diverged in
    training); a result written before ``"finite"`` existed is judged by its loss."""
    loss = row.get("loss")
    if row.get("finite") is False or row.get("accuracy") is None or loss is None:
        return False
    return math.isfinite(float(loss))


def accuracy_at(result: dict[str, Any], length: int) -> float | None:
    """The evaluation accuracy of ``result`` at ``length``; ``None`` where there is none: the
    run diverged in training, or its evaluation at ``length`` is non-finite (NaN or infinite
    loss or logits). ``KeyError`` if it was not evaluated at that length."""
    row = _row(result, length)
    return float(row["accuracy"]) if _finite(row) else None


def diverged_lengths(result: dict[str, Any]) -> list[int]:
    """The lengths at which an evaluated run's evaluation is non-finite (``[]`` for a run that
    diverged in training: it was not evaluated)."""
    if result.get("diverged"):
        return []
    return [row["length"] for row in result["eval"] if not _finite(row)]


def loss_text(loss: float | str | None) -> str:
    """An evaluation loss for a table: ``0.123``, ``nan``, ``inf``, or ``-`` for none."""
    if loss is None:
        return "-"
    value = float(loss)
    return f"{value:.3f}" if math.isfinite(value) else str(value)


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per run: name, variant, parameters, final training loss and accuracy, training
    tokens/s, wall time, then the evaluation accuracy (as a percentage) and loss at every
    length. A run that diverged in training shows ``diverged`` in place of its numbers; an
    evaluation that is non-finite shows ``diverged at length N`` in place of its accuracy, and
    its loss (``nan`` or ``inf``)."""
    if not results:
        raise ValueError("markdown_table: no results")
    lengths = [row["length"] for row in results[0]["eval"]]
    head = ["run", "variant", "parameters", "train loss", "train acc", "train tok/s", "train s"]
    head += [f"acc @ {n}" for n in lengths] + [f"loss @ {n}" for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["name"], r["variant"], f"{r['parameters']:,}"]
        if r.get("diverged"):
            cells += ["diverged", "-", "-", f"{r['train_seconds']:.0f}"] + ["-"] * (2 * len(lengths))
        else:
            cells += [f"{r['loss']:.3f}", f"{100 * r['accuracy']:.1f}%", f"{r['tokens_per_s']:,.0f}",
                      f"{r['train_seconds']:.0f}"]
            accuracies = [accuracy_at(r, n) for n in lengths]
            cells += [f"diverged at length {n}" if a is None else f"{100 * a:.1f}%"
                      for n, a in zip(lengths, accuracies)]
            cells += [loss_text(_row(r, n)["loss"]) for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _losses(metrics: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    for line in metrics.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record["kind"] == "train":
                steps.append(record["step"])
                losses.append(record["loss"])
    return steps, losses


def plot_results(
    results: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    metrics: Sequence[Path | None] | None = None,
    window: int | None = None,
    train_len: int | None = None,
    chance: float | None = None,
    title: str = "",
) -> Path:
    """Writes a PNG: evaluation accuracy against length for every run (left; a non-finite
    evaluation is an ``x`` at 0 and named in the legend, not a point) and, when the
    runs' ``metrics.jsonl`` files are given, their training loss curves (right). ``window`` and
    ``train_len`` label the plot (the attention window, a vertical line at the training length);
    ``chance`` draws a horizontal line at that accuracy (a fraction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    panels = 2 if metrics is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    for index, r in enumerate(results):
        if r.get("diverged"):
            ax.plot([], [], marker="x", linestyle="none", label=f"{r['name']} (diverged)")
            continue
        lengths = [row["length"] for row in r["eval"]]
        accuracies = [accuracy_at(r, n) for n in lengths]
        broken = diverged_lengths(r)
        label = r["name"] + (f" (diverged at {', '.join(map(str, broken))})" if broken else "")
        # runs with equal results overlap: markers of shrinking size and changing shape keep
        # every run visible; a non-finite evaluation leaves a gap (NaN is not drawn) and an x at 0
        line, = ax.plot(lengths, [math.nan if a is None else 100 * a for a in accuracies],
                        marker=_MARKERS[index % len(_MARKERS)], markersize=max(3.0, 9.0 - 1.2 * index),
                        linestyle=_LINES[index % len(_LINES)], label=label)
        if broken:
            ax.plot(broken, [0.0] * len(broken), marker="x", linestyle="none", color=line.get_color())
    lengths = sorted({row["length"] for r in results for row in r["eval"]})
    if len(lengths) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
    if train_len is not None:
        ax.axvline(train_len, color="grey", linestyle=":", label=f"training length {train_len}")
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=0.8, label=f"chance {100 * chance:.1f}%")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("recall accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if window is not None:
        ax.set_title(f"accuracy by length (attention window {window})", fontsize=10)
    if metrics is not None:
        ax = axes[0][1]
        for r, m in zip(results, metrics):
            if m is not None and m.is_file():
                steps, losses = _losses(m)
                ax.plot(steps, losses, label=r["name"])
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
