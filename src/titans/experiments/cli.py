"""The ``titans`` command line: train, evaluate, ablate and demonstrate on the synthetic tasks.

::

    titans train --variant mac --task mqar --steps 200 --out runs/mac [--config FILE.json] [--recipe atlas]
                 [--preset tiny] [--device cpu|cuda] [--memory mlp --memory-depth 2 --optimizer momentum ...]
    titans train --out runs/mac --resume [--steps 400]   (flags that would change the run are refused)
    torchrun --nproc_per_node 2 -m titans train ...   (DistributedDataParallel; see titans.experiments.train)
    titans eval --checkpoint runs/mac --task mqar [--lengths 256,1024,4096] [--depths 0,0.5,1]
    titans ablate ablation.json --out runs/ablation      (see titans.experiments.ablation for the file)
    titans demo [--quick] [--variant mag|mac] [--out runs/demo]

Bad input (unknown names, invalid values, missing files) prints one line ``titans: error: ...``
and exits with status 2; so does a second ``train`` into a directory a living run holds, and
``--resume`` with flags that differ from the saved run (all of them listed). An interrupted run
exits with 130 and keeps its last checkpoint. A training loss, gradient or update that becomes
non-finite exits with 1; so does ``eval`` when the evaluation at any length is non-finite (after
its report, which shows the loss and no accuracy for that length). Warnings (a torn last line of
``metrics.jsonl`` dropped on resume) are one line ``titans: warning: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch

from titans.experiments.ablation import load_spec, metrics_paths, run_ablation
from titans.checkpoint import load_pretrained
from titans.config import TitansConfig
from titans.recipes import RECIPES, recipe_fields
from titans.experiments.demo import DEMO_VARIANTS, DemoSettings, run_demo
from titans.experiments.evaluate import evaluate, json_safe
from titans.experiments.report import markdown_table, plot_results
from titans.experiments.run_checkpoint import checkpoint_note, latest_checkpoint
from titans.experiments.tasks import TASKS, Task, chance_accuracy, make_task, task_to_dict
from titans.experiments.tasks.text import BYTE_VOCAB
from titans.experiments.train import DIST_TIMEOUT, TrainConfig, load_run, train, world

__all__ = ["main"]

#: Component overrides: command-line flag -> TitansConfig field, value parser.


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
    "--optimizer": ("optimizer", str, "inner (memory) optimizer: momentum, gd or muon"),
    "--retention": ("retention", str, "memory retention: l2 (default), lq, kl or elastic_net"),
    "--retention-readout": ("retention_readout", str, "where a retention's readout applies: token (default) or chunk"),
    "--feature-map": ("feature_map", str, "feature map on the memory's queries and keys: identity or polynomial"),
    "--omega-window": ("omega_window", int, "tokens in each token's inner loss (Omega rule; 1: the paper's)"),
    "--objective": ("objective", str, "inner objective (squared_error, huber, lp, dot_product)"),
    "--lr-gate": ("lr_gate", _gate, "theta: 'learned' or a constant in (0, 1]"),
    "--lr-gate-init": ("lr_gate_init", float, "the learned theta's start value (default: the step scale's)"),
    "--lr-gate-max": ("lr_gate_max", float, "the learned theta's ceiling (default: the step scale's)"),
    "--decay-gate-init": ("decay_gate_init", float, "the learned alpha's start value (default: min(0.01, max / 10))"),
    "--decay-gate-max": ("decay_gate_max", float, "the learned alpha's ceiling (default: the variant's, "
                       "titans.config.DEFAULT_DECAY_MAX; 1 where it has none)"),
    "--step-scale": ("step_scale", str, "how theta becomes the step: normalized (default) or literal (eq. 13)"),
    "--forget-target": ("forget_target", str, "where forgetting pulls the memory: init (default, W_0) or zero (eq. 14)"),
    "--momentum-gate": ("momentum_gate", _gate, "eta: 'learned', a constant in [0, 1), or 'none'"),
    "--decay-gate": ("decay_gate", _gate, "alpha: 'learned', a constant in [0, 1], or 'none'"),
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


#: ``train`` flags -> (TrainConfig field, default). Their parser default is None ("not given"),
#: so that ``--resume`` can tell a flag given on the command line from its default.
_TRAIN_FLAGS: dict[str, tuple[str, int | float]] = {
    "--batch-size": ("batch_size", 8), "--seq-len": ("seq_len", 64), "--warmup": ("warmup", 10),
    "--eval-every": ("eval_every", 0), "--eval-batches": ("eval_batches", 2),
    "--checkpoint-every": ("checkpoint_every", 0), "--log-every": ("log_every", 10), "--seed": ("seed", 0),
    "--lr": ("lr", 1e-3), "--weight-decay": ("weight_decay", 0.1), "--clip": ("clip", 1.0),
    "--min-lr-ratio": ("min_lr_ratio", 0.1),
}
#: ``train`` flags that may change when a run resumes: the length of the run (``--steps``, which
#: stretches the cosine schedule from then on), where it runs, and how often it reports, evaluates
#: and checkpoints. Every other flag shapes the trajectory and must match the saved run.
RESUME_MAY_CHANGE = ("--steps", "--device", "--eval-every", "--eval-batches", "--checkpoint-every", "--log-every",
                     "--dist-timeout", "--quiet")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


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


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The task options given on the command line: ``--task-arg`` pairs, and ``--data PATH`` (the
    text task's ``data``, as an absolute path so that it compares with a saved run's)."""
    options = _task_options(args.task_arg)
    if "data" in options and isinstance(options["data"], str):
        options["data"] = str(Path(options["data"]).expanduser().resolve())
    if getattr(args, "data", None) is not None:
        data = str(args.data.expanduser().resolve())
        if options.get("data", data) != data:
            raise ValueError(f"--data {args.data} and --task-arg data={options['data']} name different files")
        options["data"] = data
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
    tr.add_argument("--data", type=Path, help="--task text: a UTF-8 file or a folder of them (byte tokens)")
    tr.add_argument("--steps", type=int, help="optimizer steps (default 100)")
    tr.add_argument("--config", type=Path, help="a TitansConfig JSON file (titans-config document or plain fields)")
    tr.add_argument("--preset", help="size preset when no --config is given (default tiny)")
    tr.add_argument("--recipe", choices=sorted(RECIPES),
                    help="a named memory recipe (its fields, before the component overrides below)")
    for flag, (_, default) in _TRAIN_FLAGS.items():
        tr.add_argument(flag, type=type(default), default=None, help=f"(default {default})")
    tr.add_argument("--device", help="cpu or cuda (bf16 autocast on cuda; default cpu, on --resume the run's)")
    tr.add_argument("--dist-timeout", type=_positive_seconds, default=DIST_TIMEOUT, metavar="SECONDS",
                    help=f"under torchrun: how long the processes wait for each other (default {DIST_TIMEOUT:g})")
    group = tr.add_argument_group("component overrides (TitansConfig fields)")
    for flag, (_, kind, text) in OVERRIDES.items():
        group.add_argument(flag, type=kind, default=None, help=text)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a synthetic task")
    ev.add_argument("--checkpoint", required=True, type=Path, help="a run directory or a checkpoint directory")
    ev.add_argument("--task", required=True, help=f"one of {TASKS.names()}")
    ev.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--data", type=Path, help="--task text: the text (evaluated on its held-out part)")
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


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _overrides(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    """The component flags given: TitansConfig field -> (flag, value as the config holds it)."""
    given = {}
    for flag, (field, _, _) in OVERRIDES.items():
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if field == "memory_layers" and value == "all":
            value = None
        elif field in ("lr_gate", "momentum_gate", "decay_gate") and value == "none":
            value = None
        given[field] = (flag, value)
    return given


def _model_config(args: argparse.Namespace) -> TitansConfig:
    if args.config is not None and args.preset is not None:
        raise ValueError(f"train: give --config or --preset, not both (got --config {args.config} "
                         f"and --preset {args.preset})")
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config: {args.config} does not exist")
        try:
            data = json.loads(args.config.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--config: {args.config} is not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"--config: {args.config} must hold a JSON object, not a {type(data).__name__}")
        config = TitansConfig.from_json(json.dumps(data)) if "format" in data else TitansConfig.from_dict(data)
    else:
        config = TitansConfig.preset("tiny" if args.preset is None else args.preset)
    changes = recipe_fields(args.recipe) if getattr(args, "recipe", None) is not None else {}
    overrides = {field: value for field, (_, value) in _overrides(args).items()}
    for component in ("objective", "retention", "feature_map"):
        if component in overrides and overrides[component] != changes.get(component):
            changes.pop(f"{component}_kwargs", None)  # the recipe's settings belong to its own component
    changes.update(overrides)
    if args.variant is not None:
        changes["variant"] = args.variant
    if args.task == "text" and args.config is None and "vocab_size" not in changes:
        changes["vocab_size"] = max(config.vocab_size, BYTE_VOCAB)  # bytes: a preset's own vocabulary may be smaller
    return dataclasses.replace(config, **changes)


def _same(given: Any, saved: Any) -> bool:
    """Equality of a flag's value and a saved one (a JSON list stands for a tuple)."""
    normal = [tuple(v) if isinstance(v, list) else v for v in (given, saved)]
    return normal[0] == normal[1]


def _resume_conflicts(args: argparse.Namespace, model_config: TitansConfig, saved: TrainConfig,
                      task: Task) -> list[str]:
    """``"--flag VALUE (run: SAVED)"`` for every flag given with ``--resume`` that differs from
    the saved run (see :data:`RESUME_MAY_CHANGE` for the flags that may)."""
    conflicts = []
    if args.variant is not None and args.variant != model_config.variant:
        conflicts.append(f"--variant {args.variant} (run: {model_config.variant})")
    if args.task is not None and args.task != task.name:
        conflicts.append(f"--task {args.task} (run: {task.name})")
    saved_options = task_to_dict(task)["options"]
    for key, value in _options(args).items():
        if key not in saved_options:
            conflicts.append(f"--task-arg {key}={json.dumps(value)} (run: the task has no option {key!r})")
        elif not _same(value, saved_options[key]):
            conflicts.append(f"--task-arg {key}={json.dumps(value)} (run: {json.dumps(saved_options[key])})")
    if getattr(args, "recipe", None) is not None:
        differ = [f for f, value in recipe_fields(args.recipe).items() if not _same(value, getattr(model_config, f))]
        if differ:
            conflicts.append(f"--recipe {args.recipe} (run differs in {', '.join(differ)})")
    for field, (flag, value) in _overrides(args).items():
        if not _same(value, getattr(model_config, field)):
            conflicts.append(f"{flag} {getattr(args, _dest(flag))} (run: {getattr(model_config, field)})")
    if args.config is not None or args.preset is not None:
        flag = f"--config {args.config}" if args.config is not None else f"--preset {args.preset}"
        # the variant comes from --variant (a run's always did), else it is the run's
        probe = argparse.Namespace(**{**vars(args), "variant": args.variant or model_config.variant})
        given, run = _model_config(probe).to_dict(), model_config.to_dict()
        fields = [f"{k} {given.get(k)} (run: {run.get(k)})" for k in sorted(given.keys() | run.keys())
                  if not _same(given.get(k), run.get(k))]
        if fields:
            conflicts.append(f"{flag} (differs in {'; '.join(fields)})")
    for flag, (field, _) in _TRAIN_FLAGS.items():
        value = getattr(args, _dest(flag))
        if flag not in RESUME_MAY_CHANGE and value is not None and value != getattr(saved, field):
            conflicts.append(f"{flag} {value} (run: {getattr(saved, field)})")
    return conflicts


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
        conflicts = _resume_conflicts(args, model_config, saved, task)
        if conflicts:
            raise ValueError(f"--resume: these flags differ from the run in {args.out}: {', '.join(conflicts)} "
                             f"(only {', '.join(RESUME_MAY_CHANGE)} may change on resume)")
        changes = {field: getattr(args, _dest(flag)) for flag, (field, _) in _TRAIN_FLAGS.items()
                   if flag in RESUME_MAY_CHANGE and getattr(args, _dest(flag)) is not None}
        for name in ("steps", "device"):
            if getattr(args, name) is not None:
                changes[name] = getattr(args, name)
        config = dataclasses.replace(saved, **changes)
    else:
        if args.variant is None or args.task is None:
            raise ValueError("train: --variant and --task are required (unless --resume)")
        model_config = _model_config(args)
        options = {"vocab_size": model_config.vocab_size, **_options(args)}
        task = make_task(args.task, **options)
        numbers = {field: default if getattr(args, _dest(flag)) is None else getattr(args, _dest(flag))
                   for flag, (field, default) in _TRAIN_FLAGS.items()}
        config = TrainConfig(steps=100 if args.steps is None else args.steps,
                             device="cpu" if args.device is None else args.device, **numbers)
    progress = None if args.quiet else _progress
    try:
        summary = train(model_config, config, task, args.out, resume=args.resume, progress=progress,
                        dist_timeout=args.dist_timeout)
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
    options = {"vocab_size": model.config.vocab_size, **_options(args)}
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
            if row["finite"] and "bits_per_byte" in row:
                result += f"  bits/byte {row['bits_per_byte']:.4f}"
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
                       train_len=spec.train.seq_len, chance=chance_accuracy(spec.task),
                       title=f"titans ablate: {args.spec.name} ({spec.task.name})")
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


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    sys.stderr.write(f"titans: warning: {str(message).splitlines()[0]}\n")


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():  # restores the caller's warning display afterwards
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.command](args)
    except FloatingPointError as err:  # a diverged run: one line, status 1 (not bad input)
        sys.stderr.write(f"titans: error: {str(err).splitlines()[0]}\n")
        return 1
    except (ValueError, OSError, KeyError) as err:  # bad input: one line, no traceback
        message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
        sys.stderr.write(f"titans: error: {message.splitlines()[0] if message else type(err).__name__}\n")
        return 2
