"""Ablations: several model variants or component choices trained on one task with one budget,
then evaluated at several lengths and compared in one table.

An ablation is described by a JSON document (see :func:`parse_spec`)::

    {
      "task": "mqar", "task_args": {"num_pairs": 4, "queries_at_end": true},
      "preset": "tiny",
      "model": {"dim": 64, "window": 16},
      "train": {"steps": 200, "batch_size": 16, "seq_len": 128, "lr": 0.003},
      "eval": {"lengths": [128, 256, 512], "batches": 2, "batch_size": 16},
      "seeds": [0, 1, 2],
      "runs": [
        {"name": "mac-mlp", "variant": "mac"},
        {"name": "mac-linear", "variant": "mac", "memory_model": "linear"},
        {"name": "swa", "variant": "swa", "seeds": [0]}
      ]
    }

Every run trains with :func:`titans.experiments.train.train` into ``OUT/runs/NAME`` (its metrics as JSON
lines, its checkpoints) and writes ``OUT/runs/NAME/result.json``. With ``seeds`` (for every
run, or a run's own), each seed is a replicate trained from that seed (initialisation and
data) into ``OUT/runs/NAME/seed-S``; the report gives the mean and spread over them. Running
the same ablation again reuses finished runs and resumes interrupted ones from their last
checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titans.checkpoint import load_pretrained
from titans.config import CONFIG_VERSION, TitansConfig
from titans.experiments.evaluate import evaluate, json_safe
from titans.model import count_parameters
from titans.experiments.run_checkpoint import latest_checkpoint
from titans.experiments.run_metrics import read_records
from titans.experiments.tasks import Task, make_task, task_to_dict
from titans.experiments.tasks.base import check_int
from titans.experiments.train import METRICS_NAME, TrainConfig, train

__all__ = [
    "AblationSpec",
    "RunSpec",
    "equal_size_baseline",
    "load_spec",
    "metrics_paths",
    "parse_spec",
    "replicate_dir",
    "run_ablation",
    "run_one",
]

RESULT_NAME = "result.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"task", "task_args", "preset", "model", "train", "eval", "runs", "seeds"}
_EVAL_KEYS = {"lengths", "batches", "batch_size", "seed"}


@dataclass(frozen=True)
class RunSpec:
    """One run of an ablation.

    Args:
        name: the run's name (a directory name).
        model: the model it trains.
        seeds: replicate seeds, each trained from that seed (initialisation and data) into its
            own ``seed-S`` directory; empty: one replicate at the training config's seed,
            directly in the run's directory.
        changes: the ``TitansConfig`` fields this run sets on top of the ablation's shared
            model, as ``(field, value)`` pairs (reported in the table's "changes" column).
    """

    name: str
    model: TitansConfig
    seeds: tuple[int, ...] = ()
    changes: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _check_seeds(self.seeds, f"RunSpec({self.name!r}).seeds", allow_empty=True)


@dataclass(frozen=True)
class AblationSpec:
    """A whole ablation: one task, one training budget, one evaluation, several runs.

    Args:
        task: the synthetic task every run trains and is evaluated on.
        train: the training budget and settings shared by every run.
        lengths: evaluation lengths (tokens per sequence).
        eval_batches, eval_batch_size: evaluation batches per length and their size.
        eval_seed: seed of the evaluation stream (the same sequences for every run).
        runs: the runs, with unique names.
    """

    task: Task
    train: TrainConfig
    lengths: tuple[int, ...]
    runs: tuple[RunSpec, ...]
    eval_batches: int = 2
    eval_batch_size: int = 8
    eval_seed: int = 0


def equal_size_baseline(config: TitansConfig, variant: str = "swa") -> TitansConfig:
    """``config`` as the attention-only ``variant`` (``"swa"`` or ``"transformer"``), its SwiGLU
    width (a multiple of 8) chosen so that its parameter count is closest to ``config``'s: a
    baseline that differs from the memory model by the memory alone, not by size.

    Args:
        config: the memory model's configuration.
        variant: the attention-only variant, ``"swa"`` or ``"transformer"``.

    Returns:
        The baseline's configuration, ``config`` with ``variant`` and ``ffn_hidden`` replaced.

    Raises:
        ValueError: when ``variant`` is neither ``"swa"`` nor ``"transformer"``.
    """
    if variant not in ("swa", "transformer"):
        raise ValueError(f"equal_size_baseline: variant must be 'swa' or 'transformer', got {variant!r}")
    target = count_parameters(config)
    base = dataclasses.replace(config, variant=variant)
    return dataclasses.replace(base, ffn_hidden=min(
        range(8, 16 * config.dim + 1, 8),
        key=lambda width: abs(count_parameters(dataclasses.replace(base, ffn_hidden=width)) - target)))


def _check_seeds(seeds: Any, where: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    """``seeds`` as a tuple of distinct integers >= 0 (a list from JSON, or a tuple)."""
    if not isinstance(seeds, (list, tuple)) or (not seeds and not allow_empty):
        raise ValueError(f"ablation: {where} must be a non-empty list of seeds, got {seeds!r}")
    for seed in seeds:
        check_int("ablation", where.removeprefix("ablation."), seed, 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"ablation: {where} repeats a seed: {list(seeds)}")
    return tuple(seeds)


def replicate_dir(out_dir: str | Path, name: str, seed: int | None) -> Path:
    """Where a run's replicate lives: ``OUT/runs/NAME`` (a run without seeds) or
    ``OUT/runs/NAME/seed-S``."""
    base = Path(out_dir) / "runs" / name
    return base if seed is None else base / f"seed-{seed}"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"ablation: {where} must be a JSON object, got {type(value).__name__}")
    return value


def _run_name(fields: dict[str, Any]) -> str:
    """A default run name from the values a run sets, e.g. ``mac-linear`` for
    ``{"variant": "mac", "memory_model": "linear"}``."""
    if not fields:
        return "base"
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(value)).strip("_") or "_" for value in fields.values())


def parse_spec(document: dict[str, Any]) -> AblationSpec:
    """Builds an :class:`AblationSpec` from a JSON document (module docstring).

    Keys: ``runs`` (required: a non-empty list of objects of :class:`TitansConfig` fields, each
    with an optional ``name``, by default its values joined by ``-``, and optional ``seeds``),
    ``task`` (default ``"mqar"``), ``task_args``, ``preset`` (default ``"tiny"``), ``model``
    (fields shared by every run), ``train`` (:class:`TrainConfig` fields), ``eval``
    (``lengths``, default ``[train.seq_len]``; ``batches``; ``batch_size``; ``seed``),
    ``seeds`` (replicate seeds of every run that names none of its own: distinct integers
    >= 0). A run's ``vocab_size`` defaults to the task's needs.

    Args:
        document: the parsed JSON document, a mapping of the keys above.

    Returns:
        The :class:`AblationSpec`: the task, training settings, evaluation lengths and runs.

    Raises:
        ValueError: naming the problem: unknown keys or fields, duplicate or unusable run names,
            invalid values.
    """
    document = _mapping(document, "the document")
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"ablation: unknown keys {unknown}; choose from {sorted(_TOP_KEYS)}")
    runs = document.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ValueError("ablation: 'runs' must be a non-empty list of run objects")
    task_name = document.get("task", "mqar")
    if not isinstance(task_name, str):
        raise ValueError(f"ablation: 'task' must be a task name, got {task_name!r}")
    task_args = dict(_mapping(document.get("task_args", {}), "'task_args'"))
    preset = document.get("preset", "tiny")
    base = TitansConfig.preset(preset) if isinstance(preset, str) else None
    if base is None:
        raise ValueError(f"ablation: 'preset' must be a preset name, got {preset!r}")
    shared = dict(_mapping(document.get("model", {}), "'model'"))
    fields = {f.name for f in dataclasses.fields(TitansConfig)}
    task_args.setdefault("vocab_size", shared.get("vocab_size", base.vocab_size))
    task = make_task(task_name, **task_args)

    train_fields = dict(_mapping(document.get("train", {}), "'train'"))
    known_train = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(train_fields) - known_train)
    if unknown:
        raise ValueError(f"ablation: unknown 'train' fields {unknown}; choose from {sorted(known_train)}")
    try:
        train_config = TrainConfig(**train_fields)
    except TypeError as err:  # a value of the wrong kind that the dataclass could not take
        raise ValueError(f"ablation: 'train': {err}") from err

    shared_seeds = () if "seeds" not in document else _check_seeds(document["seeds"], "'seeds'")
    evaluation = dict(_mapping(document.get("eval", {}), "'eval'"))
    unknown = sorted(set(evaluation) - _EVAL_KEYS)
    if unknown:
        raise ValueError(f"ablation: unknown 'eval' keys {unknown}; choose from {sorted(_EVAL_KEYS)}")
    lengths = evaluation.get("lengths", [train_config.seq_len])
    if (not isinstance(lengths, list) or not lengths
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths)):
        raise ValueError(f"ablation: 'eval.lengths' must be a non-empty list of positive integers, got {lengths!r}")
    numbers = {}
    for key, default, low in (("batches", 2, 1), ("batch_size", train_config.batch_size, 1), ("seed", 0, 0)):
        value = evaluation.get(key, default)
        check_int("ablation", f"eval.{key}", value, low)
        numbers[key] = value

    specs: list[RunSpec] = []
    for index, run in enumerate(runs):
        run = dict(_mapping(run, f"runs[{index}]"))
        name = run.pop("name", None)
        seeds = shared_seeds if "seeds" not in run else _check_seeds(run.pop("seeds"), f"runs[{index}].seeds")
        unknown = sorted((set(run) | set(shared)) - fields)
        if unknown:
            raise ValueError(f"ablation: runs[{index}]: unknown TitansConfig fields {unknown}")
        name = _run_name(run) if name is None else name
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > 120:
            raise ValueError(
                f"ablation: runs[{index}]: name {name!r} must be 1-120 letters, digits, '_', '-', '.' "
                "(it names a directory)"
            )
        if any(spec.name == name for spec in specs):
            raise ValueError(f"ablation: runs[{index}]: the name {name!r} is used twice")
        changes = {"vocab_size": task.vocab_size, **shared, **run}
        try:
            model = dataclasses.replace(base, **changes)
        except TypeError as err:
            raise ValueError(f"ablation: runs[{index}] ({name}): {err}") from err
        if model.vocab_size < task.vocab_size:
            raise ValueError(
                f"ablation: runs[{index}] ({name}): vocab_size {model.vocab_size} < the task's {task.vocab_size}"
            )
        specs.append(RunSpec(name, model, seeds=seeds, changes=tuple(run.items())))
    return AblationSpec(task=task, train=train_config, lengths=tuple(lengths), runs=tuple(specs),
                        eval_batches=numbers["batches"], eval_batch_size=numbers["batch_size"],
                        eval_seed=numbers["seed"])


def load_spec(path: str | Path) -> AblationSpec:
    """:func:`parse_spec` of a JSON file.

    Args:
        path: the JSON file of the spec.

    Returns:
        The :class:`AblationSpec` the file describes.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: on invalid JSON (with the position), or a spec :func:`parse_spec` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ablation: {path} does not exist")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"ablation: {path} is not valid JSON ({err})") from err
    return parse_spec(document)


def _identity(run: RunSpec, spec: AblationSpec) -> dict[str, Any]:
    """What a finished run must match to be reused."""
    return json.loads(json.dumps({
        "model": run.model.to_dict(), "config_version": CONFIG_VERSION, "train": dataclasses.asdict(spec.train),
        "task": task_to_dict(spec.task), "lengths": list(spec.lengths),
        "eval": [spec.eval_batches, spec.eval_batch_size, spec.eval_seed],
    }))


def _same_identity(saved: Any, identity: dict[str, Any]) -> bool:
    """Whether a finished run's recorded identity is ``identity``. Its model configuration is read
    as a saved config is (:meth:`TitansConfig.from_json`), so that a field added to the config
    after the run (its old behaviour the default, or a legacy rule of ``from_json``) does not
    make it a different run, and a default changed since (a later ``config_version``) does."""
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        return False
    version = saved.get("config_version", 1)
    try:
        model = TitansConfig.from_json(json.dumps({"format": "titans-config", "version": version,
                                                   "config": saved["model"]}))
    except ValueError:
        return False
    model_now = json.loads(json.dumps(model.to_dict()))
    return {**saved, "model": model_now, "config_version": CONFIG_VERSION} == identity


def _final_train_record(metrics: Path) -> dict[str, Any]:
    train_records = [r for r in read_records(metrics) if r.get("kind") == "train"]
    if not train_records:
        raise ValueError(f"ablation: {metrics} holds no training record")
    return train_records[-1]


def run_one(
    run: RunSpec,
    spec: AblationSpec,
    out_dir: str | Path,
    *,
    seed: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Trains (or reuses, or resumes) one run in ``out_dir`` and evaluates it; with ``seed``,
    the replicate trained from that seed (``spec.train`` with ``seed`` replaced).

    Args:
        run: the run to train: its name, model configuration and changes.
        spec: the ablation the run belongs to (task, training settings, evaluation).
        out_dir: the run's directory: checkpoints, ``metrics.jsonl`` and ``result.json``.
        seed: the replicate's training seed (>= 0), or ``None`` for ``spec.train.seed``.
        progress: called with each training record, or ``None``.

    Returns:
        The result, also written to ``out_dir/result.json``, ``{"name", "variant", "seed", "replicate",
        "changes", "parameters", "loss", "accuracy", "tokens_per_s", "train_seconds", "eval":
        [{"length", "loss", "accuracy", "finite"}, ...], "identity"}`` (``seed``: the training
        seed; ``replicate``: whether ``seed`` was given) (each eval row of the needle task also has its
        ``"depth"``): the last training step's loss and accuracy, the training throughput, and
        the evaluation at every length of the spec. A run whose loss became non-finite is
        recorded, not raised: ``"diverged"`` holds the message, and its
        loss, accuracy, tokens/s and evaluation values are ``None``. An evaluation that is
        non-finite at a length has ``"finite": False``, ``"accuracy": None`` and its loss as the
        string ``"nan"`` or ``"inf"`` (the result is :func:`~titans.experiments.evaluate.json_safe`, as written).

    Raises:
        ValueError: on a ``seed`` that is not an integer >= 0, or when ``out_dir`` holds a finished
            run of a different spec.
    """
    out = Path(out_dir)
    if seed is not None:
        check_int("run_one", "seed", seed, 0)
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=seed))
    identity = _identity(run, spec)
    result_path = out / RESULT_NAME
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if _same_identity(result.get("identity"), identity):
            return json_safe(result)  # a result.json written before json_safe may hold a bare NaN
        raise ValueError(f"ablation: {out} holds a finished run of a different spec; remove it or use another --out")
    resume = out.is_dir() and any(out.glob("checkpoint-*"))
    began = time.perf_counter()
    result: dict[str, Any] = {"name": run.name, "variant": run.model.variant, "seed": spec.train.seed,
                              "replicate": seed is not None, "changes": [list(pair) for pair in run.changes]}
    try:
        train(run.model, spec.train, spec.task, out, resume=resume, progress=progress)
    except FloatingPointError as err:  # a diverged run is a result of the ablation, not a crash
        result.update(
            parameters=count_parameters(run.model), loss=None, accuracy=None, tokens_per_s=None,
            train_seconds=time.perf_counter() - began, diverged=str(err),
            eval=[{"length": n, "loss": None, "accuracy": None, "finite": None} for n in spec.lengths],
            identity=identity,
        )
    else:
        seconds = time.perf_counter() - began
        last = _final_train_record(out / METRICS_NAME)
        model = load_pretrained(latest_checkpoint(out), device=spec.train.device)
        rows = evaluate(model, spec.task, list(spec.lengths), batches=spec.eval_batches,
                        batch_size=spec.eval_batch_size, seed=spec.eval_seed)
        result.update(
            parameters=count_parameters(run.model), loss=last["loss"], accuracy=last["accuracy"],
            tokens_per_s=last["tokens_per_s"], train_seconds=seconds,
            eval=[{key: r[key] for key in ("length", "depth", "loss", "accuracy", "finite") if key in r} for r in rows],
            identity=identity,
        )
    result = json_safe(result)  # the same whether fresh or reused from result.json
    tmp = result_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True, allow_nan=False))
    tmp.replace(result_path)
    return result


def metrics_paths(out_dir: str | Path, results: list[dict[str, Any]]) -> list[Path]:
    """The ``metrics.jsonl`` of each run (each replicate) of :func:`run_ablation`'s ``results``
    in ``out_dir``."""
    return [replicate_dir(out_dir, r["name"], r["seed"] if r.get("replicate") else None) / METRICS_NAME
            for r in results]


def run_ablation(
    spec: AblationSpec,
    out_dir: str | Path,
    *,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Runs every run of ``spec`` (every replicate seed of it) in :func:`replicate_dir` (see
    :func:`run_one`), one after the other; returns their results in order (the replicates of a
    run together) and writes them to ``out_dir/results.json``.

    Args:
        spec: the ablation to run.
        out_dir: the directory of the ablation: one subdirectory per run (per replicate).
        progress: ``progress(name, record)`` receives each run's training records (``name`` is
            ``NAME/seed-S`` for a replicate), or ``None``.

    Returns:
        The result of each run (see :func:`run_one`), in order.
    """
    out = Path(out_dir)
    results = []
    for run in spec.runs:
        for seed in run.seeds or (None,):
            label = run.name if seed is None else f"{run.name}/seed-{seed}"
            report = None if progress is None else (lambda record, label=label: progress(label, record))
            results.append(run_one(run, spec, replicate_dir(out, run.name, seed), seed=seed, progress=report))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps([{k: v for k, v in r.items() if k != "identity"} for r in results], indent=1,
                              allow_nan=False))
    tmp.replace(out / "results.json")
    return results
