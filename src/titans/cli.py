"""The ``titans`` command line: train, evaluate, ablate and demonstrate on the synthetic tasks.

::

    titans train --variant mac --task mqar --steps 200 --out runs/mac [--config FILE.json]
                 [--preset tiny] [--device cpu|cuda] [--memory mlp --memory-depth 2 --optimizer momentum ...]
    titans train --out runs/mac --resume [--steps 400]
    torchrun --nproc_per_node 2 -m titans train ...   (DistributedDataParallel; see titans.train)
    titans eval --checkpoint runs/mac --task mqar [--lengths 256,1024,4096] [--depths 0,0.5,1]
    titans ablate ablation.json --out runs/ablation      (see titans.ablation for the file)
    titans demo [--quick] [--variant mag|mac] [--out runs/demo]

Bad input (unknown names, invalid values, missing files) prints one line ``titans: error: ...``
and exits with status 2; an interrupted run exits with 130 and keeps its last checkpoint. A
training loss that becomes non-finite exits with 1; so does ``eval`` when the evaluation at any
length is non-finite (after its report, which shows the loss and no accuracy for that length).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from titans.ablation import load_spec, metrics_paths, run_ablation
from titans.checkpoint import load_pretrained
from titans.config import TitansConfig
from titans.demo import DEMO_VARIANTS, DemoSettings, run_demo
from titans.evaluate import evaluate, json_safe
from titans.report import markdown_table, plot_results
from titans.run_checkpoint import checkpoint_note, latest_checkpoint
from titans.tasks import TASKS, make_task
from titans.train import TrainConfig, load_run, train, world

__all__ = ["main"]

#: Component overrides: command-line flag -> TitansConfig field, value parser.
_GATE_HELP = "'learned', a constant >= 0, or 'none'"


def _gate(text: str) -> str | float:
    if text.lower() == "none":
        return "none"  # becomes None (gate off) in _model_config; None here means "not given"
    try:
        return float(text)
    except ValueError:
        return text


def _layers(text: str) -> tuple[int, ...] | str:
    if text.lower() == "all":
        return "all"  # becomes None (every block) in _model_config; None here means "not given"
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices or 'all', got {text!r}") from err


OVERRIDES: dict[str, tuple[str, Any, str]] = {
    "--memory": ("memory_model", str, "memory model (linear, mlp, gated_mlp)"),
    "--memory-depth": ("memory_depth", int, "layers of the memory MLP (L_M)"),
    "--memory-expansion": ("memory_expansion", float, "hidden width / dim_head of the memory MLP"),
    "--memory-activation": ("memory_activation", str, "activation of the memory MLP"),
    "--memory-heads": ("memory_heads", int, "memory heads"),
    "--memory-layers": ("memory_layers", _layers, "comma-separated blocks with a memory, or 'all'"),
    "--optimizer": ("optimizer", str, "inner (memory) optimizer: momentum or gd"),
    "--objective": ("objective", str, "inner objective (squared_error, huber, lp, dot_product)"),
    "--lr-gate": ("lr_gate", _gate, f"theta: {_GATE_HELP}"),
    "--lr-gate-init": ("lr_gate_init", float, "the learned theta's start value (default: the step scale's)"),
    "--lr-gate-max": ("lr_gate_max", float, "the learned theta's ceiling (default: the step scale's)"),
    "--step-scale": ("step_scale", str, "how theta becomes the step: normalized (default) or literal (eq. 13)"),
    "--forget-target": ("forget_target", str, "where forgetting pulls the memory: init (default, W_0) or zero (eq. 14)"),
    "--momentum-gate": ("momentum_gate", _gate, f"eta: {_GATE_HELP}"),
    "--decay-gate": ("decay_gate", _gate, f"alpha: {_GATE_HELP}"),
    "--chunk-size": ("chunk_size", int, "memory chunk size"),
    "--conv-kernel": ("conv_kernel", int, "taps of the q/k/v causal convolution (0: none)"),
    "--combine": ("combine", str, "how MAC/MAG merge attention and memory"),
    "--window": ("window", int, "sliding-window size"),
    "--segment-len": ("segment_len", int, "MAC segment length"),
    "--num-persistent": ("num_persistent", int, "persistent tokens"),
    "--num-memory-tokens": ("num_memory_tokens", int, "MAC memory tokens per segment"),
    "--vocab-size": ("vocab_size", int, "model vocabulary (and the task's)"),
    "--dim": ("dim", int, "model width"),
    "--depth": ("depth", int, "blocks"),
    "--heads": ("heads", int, "attention heads"),
    "--max-seq-len": ("max_seq_len", int, "context of the transformer baseline"),
}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"titans: error: {message}\n")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _task_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--task-arg: expected KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)  # numbers, null, true/false
        except json.JSONDecodeError:
            options[key] = value  # a plain string; the task's own validation judges it
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="titans", description="Train and evaluate Titans models on synthetic tasks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    tr = sub.add_parser("train", help="train a model on a synthetic task")
    tr.add_argument("--out", required=True, type=Path, help="run directory (metrics, checkpoints)")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--variant", help="mac, mag, mal, lmm, swa or transformer")
    tr.add_argument("--task", help=f"one of {TASKS.names()}")
    tr.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a task option, e.g. num_pairs=8 (repeatable)")
    tr.add_argument("--steps", type=int, help="optimizer steps (default 100)")
    tr.add_argument("--config", type=Path, help="a TitansConfig JSON file (titans-config document or plain fields)")
    tr.add_argument("--preset", default="tiny", help="size preset when no --config is given (default tiny)")
    for flag, default in (("--batch-size", 8), ("--seq-len", 64), ("--warmup", 10), ("--eval-every", 0),
                          ("--eval-batches", 2), ("--checkpoint-every", 0), ("--log-every", 10), ("--seed", 0)):
        tr.add_argument(flag, type=int, default=default, help=f"(default {default})")
    for flag, default in (("--lr", 1e-3), ("--weight-decay", 0.1), ("--clip", 1.0), ("--min-lr-ratio", 0.1)):
        tr.add_argument(flag, type=float, default=default, help=f"(default {default})")
    tr.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    group = tr.add_argument_group("component overrides (TitansConfig fields)")
    for flag, (_, kind, text) in OVERRIDES.items():
        group.add_argument(flag, type=kind, default=None, help=text)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a synthetic task")
    ev.add_argument("--checkpoint", required=True, type=Path, help="a run directory or a checkpoint directory")
    ev.add_argument("--task", required=True, help=f"one of {TASKS.names()}")
    ev.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--lengths", type=_int_list, default=[256, 1024, 4096], help="comma-separated lengths")
    ev.add_argument("--depths", type=_float_list, default=None, help="needle depths in [0, 1] (needle only)")
    ev.add_argument("--batches", type=int, default=2)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--json", action="store_true", help="print one JSON object per row")

    ab = sub.add_parser("ablate", help="train and compare several variants on one task and budget")
    ab.add_argument("spec", type=Path, help="the ablation's JSON file (see docs/training.md)")
    ab.add_argument("--out", required=True, type=Path, help="directory of the runs, results.json, report.md, ablation.png")
    ab.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    de = sub.add_parser("demo", help="memory model vs sliding-window baseline on recall beyond the window")
    de.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    de.add_argument("--quick", action="store_true", help="fewer steps and lengths (under two minutes)")
    de.add_argument("--variant", choices=tuple(DEMO_VARIANTS), default="mag", help="the memory model (default mag)")
    de.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return parser


def _model_config(args: argparse.Namespace) -> TitansConfig:
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config: {args.config} does not exist")
        data = json.loads(args.config.read_text())
        config = TitansConfig.from_json(json.dumps(data)) if "format" in data else TitansConfig.from_dict(data)
    else:
        config = TitansConfig.preset(args.preset)
    changes = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in OVERRIDES.items()}
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes.get("memory_layers") == "all":
        changes["memory_layers"] = None
    for name in ("lr_gate", "momentum_gate", "decay_gate"):
        if changes.get(name) == "none":
            changes[name] = None
    if args.variant is not None:
        changes["variant"] = args.variant
    return dataclasses.replace(config, **changes)


def _progress(record: dict[str, Any]) -> None:
    if record["kind"] == "eval":
        result = (f"loss {record['loss']:.4f}  accuracy {record['accuracy']:.3f}" if record["finite"]
                  else f"loss {record['loss']}  diverged (non-finite evaluation, no accuracy)")
        sys.stderr.write(f"eval  step {record['step']}: {result}\n")
        return
    eta = int(record["eta_s"])
    sys.stderr.write(
        f"step {record['step']}/{record['total']}  loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  "
        f"lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s  ETA {eta // 60}:{eta % 60:02d}\n"
    )


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        model_config, saved, task, _ = load_run(args.out)
        steps = args.steps if args.steps is not None else saved.steps
        config = dataclasses.replace(saved, steps=steps, device=args.device)
        if args.task is not None and args.task != task.name:
            raise ValueError(f"--task: the run in {args.out} trains {task.name!r}, not {args.task!r}")
    else:
        if args.variant is None or args.task is None:
            raise ValueError("train: --variant and --task are required (unless --resume)")
        model_config = _model_config(args)
        options = {"vocab_size": model_config.vocab_size, **_task_options(args.task_arg)}
        task = make_task(args.task, **options)
        config = TrainConfig(
            steps=100 if args.steps is None else args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
            lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, min_lr_ratio=args.min_lr_ratio,
            clip=args.clip, eval_every=args.eval_every, eval_batches=args.eval_batches,
            checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed, device=args.device,
        )
    progress = None if args.quiet else _progress
    try:
        summary = train(model_config, config, task, args.out, resume=args.resume, progress=progress)
    except KeyboardInterrupt:
        note = checkpoint_note(args.out, resume_hint=" (resume with --resume)")
        sys.stderr.write(f"titans: interrupted; {note}\n")
        return 130
    if world()[0] == 0:  # under torchrun only rank 0 reports
        print(json.dumps(json_safe(summary), sort_keys=True, allow_nan=False))
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.device not in ("cpu", "cuda"):
        raise ValueError(f"--device: must be 'cpu' or 'cuda', got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: 'cuda' requested but CUDA is not available")
    if args.batches < 1 or args.batch_size < 1:
        raise ValueError("--batches and --batch-size must be >= 1")
    model = load_pretrained(latest_checkpoint(args.checkpoint), device=args.device)
    options = {"vocab_size": model.config.vocab_size, **_task_options(args.task_arg)}
    task = make_task(args.task, **options)
    rows = evaluate(model, task, args.lengths, depths=args.depths, batches=args.batches,
                    batch_size=args.batch_size, seed=args.seed)
    for row in rows:
        if args.json:
            print(json.dumps(json_safe(row), sort_keys=True, allow_nan=False))
        else:
            depth = f"  depth {row['depth']:.2f}" if "depth" in row else ""
            result = (f"loss {row['loss']:.4f}  accuracy {row['accuracy']:.3f}" if row["finite"]
                      else f"loss {row['loss']}  diverged at length {row['length']}")
            print(f"{row['task']}  length {row['length']}{depth}  {result}")
    broken = sorted({row["length"] for row in rows if not row["finite"]})
    if broken:
        sys.stderr.write(f"titans: error: eval: the evaluation is non-finite (NaN or infinite loss or logits) at "
                         f"length {', '.join(map(str, broken))}; no accuracy is reported there\n")
        return 1
    return 0


def _run_progress(quiet: bool) -> Any:
    if quiet:
        return None

    def report(name: str, record: dict[str, Any]) -> None:
        sys.stderr.write(f"[{name}] ")
        _progress(record)

    return report


def _ablate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    try:
        results = run_ablation(spec, args.out, progress=_run_progress(args.quiet))
    except KeyboardInterrupt:
        sys.stderr.write(f"titans: interrupted; finished runs and checkpoints in {args.out} are kept "
                         "(the same command continues)\n")
        return 130
    table = markdown_table(results)
    png = plot_results(results, args.out / "ablation.png",
                       metrics=metrics_paths(args.out, results),
                       train_len=spec.train.seq_len, title=f"titans ablate: {args.spec.name} ({spec.task.name})")
    (args.out / "report.md").write_text(f"# Ablation {args.spec.name}: task {spec.task.name}\n\n{table}")
    print(table, end="")
    print(f"wrote {args.out / 'report.md'}, {png}, {args.out / 'results.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    settings = DemoSettings.quick(args.variant) if args.quick else DemoSettings(variant=args.variant)
    try:
        summary = run_demo(args.out, settings, progress=_run_progress(args.quiet))
    except KeyboardInterrupt:
        sys.stderr.write(f"titans: interrupted; finished runs and checkpoints in {args.out} are kept\n")
        return 130
    print(Path(summary["report"]).read_text(), end="")
    print(f"wrote {summary['report']} and {summary['plot']}")
    return 0


_COMMANDS = {"train": _train, "eval": _eval, "ablate": _ablate, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except FloatingPointError as err:  # a diverged run: one line, status 1 (not bad input)
        sys.stderr.write(f"titans: error: {str(err).splitlines()[0]}\n")
        return 1
    except (ValueError, OSError, KeyError) as err:  # bad input: one line, no traceback
        message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
        sys.stderr.write(f"titans: error: {message.splitlines()[0] if message else type(err).__name__}\n")
        return 2
