"""Reports of ablations and of the demo: a Markdown table and a PNG plot of the run results
that :func:`titans.experiments.ablation.run_one` returns.

The plot uses matplotlib's Agg backend (no display needed) and is imported only when a plot
is drawn.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["accuracy_at", "diverged_lengths", "loss_text", "markdown_table", "plot_results"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", "-.", ":")


def _rows(result: dict[str, Any], length: int) -> list[dict[str, Any]]:
    """The evaluation rows of ``result`` at ``length``: one, or one per needle depth."""
    rows = [row for row in result["eval"] if row["length"] == length]
    if not rows:
        raise KeyError(f"run {result['name']!r} was not evaluated at length {length}")
    return rows


def _lengths(result: dict[str, Any]) -> list[int]:
    """The evaluated lengths of ``result``, each once, in order."""
    return list(dict.fromkeys(row["length"] for row in result["eval"]))


def _finite(row: dict[str, Any]) -> bool:
    """Whether an evaluation row holds a real result: a finite loss and an accuracy. A loss may
    be a number, a ``json_safe`` string such as ``"nan"``, or ``None`` (the run diverged in
    training); a result written before ``"finite"`` existed is judged by its loss."""
    loss = row.get("loss")
    if row.get("finite") is False or row.get("accuracy") is None or loss is None:
        return False
    return math.isfinite(float(loss))


def _mean_at(result: dict[str, Any], length: int, key: str) -> float | None:
    """The mean of ``key`` over the evaluation rows at ``length`` (one, or one per needle
    depth); ``None`` if any of them is non-finite."""
    rows = _rows(result, length)
    if not all(_finite(row) for row in rows):
        return None
    return statistics.fmean(float(row[key]) for row in rows)


def accuracy_at(result: dict[str, Any], length: int) -> float | None:
    """The evaluation accuracy of ``result`` at ``length``; ``None`` where there is none: the
    run diverged in training, or its evaluation at ``length`` is non-finite (NaN or infinite
    loss or logits). A task evaluated at several depths per length (the needle task) gives the
    mean over them, ``None`` if any of them is non-finite. ``KeyError`` if it was not
    evaluated at that length."""
    return _mean_at(result, length, "accuracy")


def diverged_lengths(result: dict[str, Any]) -> list[int]:
    """The lengths at which an evaluated run's evaluation is non-finite (at any depth; ``[]`` for
    a run that diverged in training: it was not evaluated)."""
    if result.get("diverged"):
        return []
    return [n for n in _lengths(result) if _mean_at(result, n, "loss") is None]


def loss_text(loss: float | str | None) -> str:
    """An evaluation loss for a table: ``0.123``, ``nan``, ``inf``, or ``-`` for none."""
    if loss is None:
        return "-"
    value = float(loss)
    return f"{value:.3f}" if math.isfinite(value) else str(value)


def _groups(results: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The results grouped by run name (the replicates of a run together), in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["name"], []).append(r)
    return list(groups.values())


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the replicates' values (sd 0 for one value, NaN
    mean for none): what the table's cells and the plot's error bars both show."""
    if not values:
        return math.nan, 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _spread(values: Sequence[float | int | None], total: int, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    """``mean ± sd`` of the real values (:func:`_mean_sd`), with ``(k/n finite)`` when some
    replicates have none; ``-`` when none has one."""
    real = [scale * v for v in values if v is not None]
    if not real:
        return "-"
    mean, sd = _mean_sd(real)
    text = format(mean, fmt) + unit
    if len(real) > 1:
        text += f" ± {format(sd, fmt)}{unit}"
    if len(real) < total:
        text += f" ({len(real)}/{total} finite)"
    return text


def _changes(result: dict[str, Any]) -> str:
    pairs = result.get("changes") or []
    return ", ".join(f"{field}={json.dumps(value)}" for field, value in pairs) or "-"


def _eval_loss(result: dict[str, Any], length: int) -> float | None:
    """The evaluation loss at ``length`` (the mean over its depths), ``None`` if non-finite."""
    return _mean_at(result, length, "loss")


def _loss_cell(result: dict[str, Any], length: int) -> str:
    """A run's evaluation loss at ``length`` for the table: the mean over its depths, or the
    first non-finite loss (``nan``, ``inf``, ``-``)."""
    loss = _eval_loss(result, length)
    if loss is not None:
        return f"{loss:.3f}"
    return loss_text(next(row for row in _rows(result, length) if not _finite(row)).get("loss"))


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ablation results.

    One row per run: name, variant, (the fields it changes, when any run changes some),
    parameters, (its seeds, when a run has replicates), final training loss and accuracy,
    training tokens/s, wall time, then the evaluation accuracy (as a percentage) and loss at
    every length (for a task evaluated at several depths per length, the needle task, the mean
    over the depths).

    A run with several replicates (seeds) shows ``mean ± sd`` over them in every cell (the
    sample standard deviation), and ``(k/n finite)`` where only k of its n replicates have a
    finite value there. A single run that diverged in training shows ``diverged`` in place of
    its numbers; an evaluation that is non-finite shows ``diverged at length N`` in place of its
    accuracy, and its loss (``nan`` or ``inf``).

    Args:
        results: the run results of :func:`~titans.run_ablation` (replicates of a run adjacent).

    Returns:
        The table, as Markdown text.

    Raises:
        ValueError: when ``results`` is empty.
    """
    if not results:
        raise ValueError("markdown_table: no results")
    lengths = _lengths(results[0])
    groups = _groups(results)
    show_changes = any(r.get("changes") for r in results)
    show_seeds = any(len(g) > 1 or g[0].get("replicate") for g in groups)
    head = ["run", "variant"] + (["changes"] if show_changes else []) + ["parameters"]
    head += (["seeds"] if show_seeds else []) + ["train loss", "train acc", "train tok/s", "train s"]
    head += [f"acc @ {n}" for n in lengths] + [f"loss @ {n}" for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in groups:
        r = group[0]
        cells = [r["name"], r["variant"]] + ([_changes(r)] if show_changes else []) + [f"{r['parameters']:,}"]
        if show_seeds:
            cells.append(", ".join(str(x.get("seed", "-")) for x in group))
        if len(group) == 1 and r.get("diverged"):
            cells += ["diverged", "-", "-", f"{r['train_seconds']:.0f}"] + ["-"] * (2 * len(lengths))
        elif len(group) == 1:
            cells += [f"{r['loss']:.3f}", f"{100 * r['accuracy']:.1f}%", f"{r['tokens_per_s']:,.0f}",
                      f"{r['train_seconds']:.0f}"]
            accuracies = [accuracy_at(r, n) for n in lengths]
            cells += [f"diverged at length {n}" if a is None else f"{100 * a:.1f}%"
                      for n, a in zip(lengths, accuracies)]
            cells += [_loss_cell(r, n) for n in lengths]
        else:
            total = len(group)
            trained = [x for x in group if not x.get("diverged")]
            cells += [_spread([x["loss"] for x in trained], total, ".3f"),
                      _spread([x["accuracy"] for x in trained], total, ".1f", 100.0, "%"),
                      _spread([x["tokens_per_s"] for x in trained], total, ",.0f"),
                      _spread([x["train_seconds"] for x in group], total, ".0f")]
            cells += [_spread([None if x.get("diverged") else accuracy_at(x, n) for x in group], total, ".1f", 100.0, "%")
                      for n in lengths]
            cells += [_spread([None if x.get("diverged") else _eval_loss(x, n) for x in group], total, ".3f")
                      for n in lengths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _losses(metrics: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    for line in metrics.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record["kind"] == "train":
                steps.append(record["step"])
                losses.append(float(record["loss"]))  # strict JSON writes a non-finite loss as "nan"
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
    ``chance`` draws a horizontal line at that accuracy (a fraction).

    Args:
        results: the run results of :func:`~titans.run_ablation` (replicates of a run adjacent).
        path: the PNG file to write (its directory is created).
        metrics: the ``metrics.jsonl`` of each result (``None`` for one without), or ``None``
            for no loss panel.
        window: the attention window, named in the title of the accuracy panel, or ``None``.
        train_len: the training length, drawn as a vertical line, or ``None``.
        chance: the chance accuracy (a fraction), drawn as a horizontal line, or ``None``.
        title: the figure's title; none when empty.

    Returns:
        ``path`` as a ``Path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    panels = 2 if metrics is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    colors = {}
    for index, group in enumerate(_groups(results)):
        name = group[0]["name"] + (f" ({len(group)} seeds, mean ± sd)" if len(group) > 1 else "")
        evaluated = [r for r in group if not r.get("diverged")]
        if not evaluated:
            ax.plot([], [], marker="x", linestyle="none", label=f"{name} (diverged)")
            continue
        lengths = _lengths(evaluated[0])
        per_length = [[a for a in (accuracy_at(r, n) for r in evaluated) if a is not None] for n in lengths]
        means, sds = zip(*(_mean_sd([100 * a for a in v]) for v in per_length))
        broken = [n for n, v in zip(lengths, per_length) if not v]
        label = name + (f" (diverged at {', '.join(map(str, broken))})" if broken else "")
        # runs with equal results overlap: markers of shrinking size and changing shape keep
        # every run visible; a non-finite evaluation leaves a gap (NaN is not drawn) and an x at 0
        line = ax.errorbar(lengths, means, yerr=sds if len(group) > 1 else None, capsize=3,
                           marker=_MARKERS[index % len(_MARKERS)], markersize=max(3.0, 9.0 - 1.2 * index),
                           linestyle=_LINES[index % len(_LINES)], label=label).lines[0]
        colors[group[0]["name"]] = line.get_color()
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
        labelled = set()
        for r, m in zip(results, metrics):
            if m is not None and m.is_file():
                steps, losses = _losses(m)
                first = r["name"] not in labelled  # replicates share their run's colour and one legend entry
                ax.plot(steps, losses, color=colors.get(r["name"]), alpha=1.0 if first else 0.5,
                        label=r["name"] if first else None)
                labelled.add(r["name"])
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
