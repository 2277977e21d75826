"""The training loop: AdamW, warmup + cosine schedule, gradient clipping, periodic evaluation,
metrics as JSON lines, atomic checkpoints and exact resumption.

Reproducibility: the model is initialised from ``seed``, and the batch of step ``s`` is drawn
from a generator seeded with ``seed * 1_000_003 + s``; the forward pass draws no random numbers.
So a run resumed from the checkpoint of step ``s`` sees the same batches, weights and optimizer
state as the uninterrupted run, and (on the same device) continues the same loss trajectory.

Many processes: launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment), :func:`train`
runs DistributedDataParallel (gloo on the CPU, NCCL on CUDA). Every rank draws the same global
batch of ``batch_size`` sequences and takes its contiguous slice of ``batch_size // world_size``
rows; the loss is the sum over the rank's scored tokens divided by the global count of scored
tokens (times ``world_size``, which undoes DDP's gradient averaging), so the gradients, weights
and logged losses are those of one process with the same global batch (up to float summation
order; :mod:`titans.experiments.distributed`). Only rank 0 writes metrics and checkpoints, holds the run
directory's lock and reports progress. The process group forms within ``dist_timeout`` seconds
(also the limit of each collective operation), else :func:`train` raises ``TimeoutError``
naming the rendezvous settings.

Guards: a run holds an OS lock on its directory (:mod:`titans.experiments.run_lock`), so a second run into
the same directory is refused; after every optimizer step the parameters are checked to be
finite, and a step whose gradient or update is not stops the run before any checkpoint of it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from titans.checkpoint import CheckpointError, load_checkpoint_config
from titans.config import TitansConfig
from titans.experiments.distributed import (
    DIST_TIMEOUT,
    distributed_step,
    join_process_group,
    lock_run_everywhere,
    replica_spread,
    world,
)
from titans.experiments.evaluate import evaluate_task
from titans.model import TitansLM
from titans.experiments.run_checkpoint import (
    STATE_NAME,
    checkpoint_note,
    latest_checkpoint,
    load_trainer_state,
    load_training_state,
    save_training_checkpoint,
)
from titans.experiments.run_lock import lock_run_directory
from titans.experiments.run_metrics import METRICS_NAME, append_record, truncate_after
from titans.experiments.tasks import Task, make_task, task_to_dict

__all__ = [
    "DIST_TIMEOUT",
    "METRICS_NAME",
    "TrainConfig",
    "batch_generator",
    "load_run",
    "lr_factor",
    "train",
    "world",
]

logger = logging.getLogger(__name__)
#: Fields that must match for a resumed run to continue the same trajectory.
_RESUME_FIELDS = ("batch_size", "seq_len", "lr", "weight_decay", "warmup", "min_lr_ratio", "clip", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Args:
        steps: optimizer steps of the whole run (the schedule spans them).
        batch_size, seq_len: sequences per step and tokens per sequence.
        lr: peak AdamW learning rate.
        weight_decay: AdamW's decoupled decay.
        warmup: steps of linear warmup, then a cosine decay to ``min_lr_ratio * lr`` at ``steps``.
        min_lr_ratio: the learning rate at the end of the cosine decay, as a fraction of ``lr``, in ``[0, 1]``.
        clip: maximum global gradient norm (``clip_grad_norm_``).
        eval_every: evaluate every this many steps (0: only at the end).
        eval_batches: batches per evaluation.
        checkpoint_every: checkpoint every this many steps (0: only at the end).
        log_every: report progress every this many steps.
        seed: model initialisation and batch stream.
        device: ``"cpu"`` or ``"cuda"`` (bf16 autocast on CUDA).
    """

    steps: int = 100
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 10
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    eval_every: int = 0
    eval_batches: int = 2
    checkpoint_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("seq_len", 1), ("warmup", 0), ("eval_every", 0),
                          ("eval_batches", 1), ("checkpoint_every", 0), ("log_every", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TrainConfig.{name}: must be an integer >= {low}, got {value!r}")
        for name in ("lr", "weight_decay", "clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TrainConfig.{name}: must be a finite number >= 0, got {value!r}")
        if self.lr == 0 or self.clip == 0:
            raise ValueError(f"TrainConfig.{'lr' if self.lr == 0 else 'clip'}: must be > 0")
        if not isinstance(self.min_lr_ratio, (int, float)) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"TrainConfig.device: must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("TrainConfig.device: 'cuda' requested but CUDA is not available")


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warmup
    over ``warmup`` steps, then cosine from 1 to ``min_lr_ratio`` at ``steps``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The generator of the training batch of ``step``: a function of ``(seed, step)`` only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _non_finite_parameters(model: torch.nn.Module, distributed: bool) -> list[str]:
    """Names of the parameters holding a NaN or infinite value (``[]``: all finite). One
    reduction and one host sync; under DDP the ranks agree (replicas are identical anyway)."""
    params = list(model.parameters())
    flags = torch.stack([torch.isfinite(p).all() for p in params]).logical_not().to(torch.int32)
    bad = torch.stack([flags.sum()])
    if distributed:
        dist.all_reduce(bad)
    if not int(bad.item()):
        return []
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def _new_model(config: TitansConfig, seed: int, device: torch.device) -> TitansLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TitansLM(config)
    return model.to(device)


def _resume(
    out_dir: Path, model_config: TitansConfig, config: TrainConfig, task: Task, device: torch.device
) -> tuple[TitansLM, dict[str, Any], dict[str, Any]]:
    checkpoint = latest_checkpoint(out_dir)
    model, optimizer_state, state = load_training_state(checkpoint, device)
    saved_model, given = model.config.to_dict(), model_config.to_dict()
    if saved_model != given:
        fields = [f"{k} {given.get(k)!r} (checkpoint: {saved_model.get(k)!r})"
                  for k in sorted(saved_model.keys() | given.keys()) if saved_model.get(k) != given.get(k)]
        raise ValueError(f"train: model_config differs from the checkpoint's in {checkpoint}: {', '.join(fields)}")
    # compare tasks, not their dicts: a checkpoint written before a task gained an option
    # (saved without it) still resumes when the option is at its default
    if make_task(state["task"]["name"], **state["task"]["options"]) != task:
        raise ValueError(f"train: task {task_to_dict(task)} differs from the checkpoint's {state['task']}")
    saved = state["train_config"]
    changed = [f"{name} {getattr(config, name)!r} (checkpoint: {saved[name]!r})"
               for name in _RESUME_FIELDS if saved[name] != getattr(config, name)]
    if changed:
        raise ValueError(f"train: resuming needs the TrainConfig of the checkpoint in {checkpoint}; these differ: "
                         f"{', '.join(changed)}")
    return model, optimizer_state, state


def train(
    model_config: TitansConfig,
    train_config: TrainConfig,
    task: Task,
    out_dir: str | Path,
    *,
    resume: bool = False,
    until: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    dist_timeout: float = DIST_TIMEOUT,
) -> dict[str, Any]:
    """Trains a :class:`TitansLM` of ``model_config`` on ``task``; writes into ``out_dir``.

    Args:
        model_config: the model to train.
        train_config: how to train it (steps, batches, optimiser, schedule, evaluation, device).
        task: the task that makes the training and evaluation batches.
        out_dir: the run's directory: checkpoints, ``metrics.jsonl`` and the lock.
        resume: continue from the newest checkpoint in ``out_dir`` (same model, task, seed and
            optimisation settings; ``steps`` may grow).
        until: stop (with a checkpoint) after this many steps although the schedule spans
            ``train_config.steps``: an interruption on purpose.
        progress: called with each train record every ``log_every`` steps and each eval record.
        dist_timeout: under ``torchrun``, seconds the processes wait for each other: to form the
            process group, and in each collective operation (a checkpoint written by rank 0
            must take less).

    The run holds an OS lock on ``out_dir`` (``out_dir/.lock``, see :mod:`titans.experiments.run_lock`;
    under ``torchrun`` rank 0 holds it) until it returns or raises.

    Each step appends ``{"kind": "train", "step", "loss", "accuracy", "lr", "tokens_per_s"}`` to
    ``metrics.jsonl``; evaluations append ``{"kind": "eval", "step", "loss", "accuracy", "finite"}``
    (a non-finite evaluation: ``"accuracy": null`` and the loss as ``"nan"`` or ``"inf"``; see
    :mod:`titans.experiments.evaluate`).

    Under ``torchrun`` (``WORLD_SIZE > 1``) it trains with DistributedDataParallel: see the
    module's docstring; ``batch_size`` must be divisible by the number of processes. The
    summary then also holds ``"world_size"`` and ``"replica_max_diff"`` (the largest difference
    of any parameter between the ranks at the end: 0.0 when the replicas stayed identical).

    Raises:
        FloatingPointError: the training loss or the gradient became NaN or infinite (the
            step's update is not made), or the update made a parameter non-finite (the message
            names the first such parameters); the state of that step is never checkpointed, so
            the checkpoints written so far hold finite weights. The message names the newest
            checkpoint, or says that none was written.
        RunLockedError: (a ``ValueError``) another living process trains into ``out_dir``.
        ValueError: an invalid argument, or a resumed run whose settings differ from its
            checkpoint's (the message lists the differences).
        TimeoutError: under ``torchrun``, the processes did not meet within ``dist_timeout``.

    Returns:
        ``{"step", "loss", "accuracy", "eval", "checkpoint"}`` of the last step.
    """
    if isinstance(dist_timeout, bool) or not isinstance(dist_timeout, (int, float)) or not (
        math.isfinite(dist_timeout) and dist_timeout > 0
    ):
        raise ValueError(f"train: dist_timeout must be a finite number of seconds > 0, got {dist_timeout!r}")
    _check_arguments(model_config, train_config, task, until)
    out = Path(out_dir)
    rank, world_size, local_rank = world()
    if world_size <= 1:
        lock = lock_run_directory(out, resume=resume)
        try:
            return _train(model_config, train_config, task, out, resume, until, progress, 0, 1, None)
        finally:
            lock.release()
    if train_config.batch_size % world_size:
        raise ValueError(
            f"train: batch_size {train_config.batch_size} must be divisible by the {world_size} processes"
        )
    device = torch.device(train_config.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        join_process_group("nccl" if device.type == "cuda" else "gloo", rank, world_size, dist_timeout)
    lock = None
    try:
        lock = lock_run_everywhere(out, resume, rank, device)
        summary = _train(model_config, train_config, task, out, resume, until, progress, rank, world_size, device)
        # Free the DDP wrapper (its reducer sits in reference cycles) and let every rank finish
        # its collectives before the group goes: a gloo group torn down at interpreter exit with
        # live references can abort the process ("terminate called without an active exception").
        gc.collect()
        dist.barrier()
        return summary
    finally:
        if lock is not None:
            lock.release()
        if owned:
            dist.destroy_process_group()


def _check_arguments(model_config: TitansConfig, train_config: TrainConfig, task: Task, until: int | None) -> None:
    """The checks of :func:`train` that need no file: made before the run directory is touched."""
    if not isinstance(model_config, TitansConfig):
        raise TypeError(f"train: model_config must be a TitansConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train: train_config must be a TrainConfig, got {type(train_config).__name__}")
    if model_config.vocab_size < task.vocab_size:
        raise ValueError(
            f"train: the task uses {task.vocab_size} tokens but TitansConfig.vocab_size is {model_config.vocab_size}"
        )
    stop = train_config.steps if until is None else until
    if isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= train_config.steps:
        raise ValueError(f"train: until must be in [1, steps={train_config.steps}], got {until!r}")


def _train(
    model_config: TitansConfig,
    train_config: TrainConfig,
    task: Task,
    out: Path,
    resume: bool,
    until: int | None,
    progress: Callable[[dict[str, Any]], None] | None,
    rank: int,
    world_size: int,
    device: torch.device | None,
) -> dict[str, Any]:
    distributed = world_size > 1
    lead = rank == 0
    if not lead:
        progress = None
    stop = train_config.steps if until is None else until
    if device is None:
        device = torch.device(train_config.device)
    metrics = out / METRICS_NAME
    start = 0
    if resume:
        model, optimizer_state, state = _resume(out, model_config, train_config, task, device)
        start = int(state["step"])
    else:
        if any(out.glob("checkpoint-*")):
            raise ValueError(f"train: {out} already holds a run (pass resume=True / --resume to continue it)")
        model = _new_model(model_config, train_config.seed, device)
    if distributed:
        # Plain DDP: every parameter gets a gradient each step, so find_unused_parameters is not
        # needed. The memory's test-time gradients (torch.autograd.grad / torch.func inside the
        # forward and in its recomputing backward) are taken with respect to intermediate
        # tensors and do not fire DDP's gradient hooks; the tests check the synchronised result. static_graph=True is wrong here: in a test it left the first step's gradients
        # unsynchronised and the replicas drifted apart. DDP broadcasts rank 0's weights at
        # construction (equal anyway: the same seed or checkpoint).
        ddp: torch.nn.Module = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        ddp = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train_config))
    if resume:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(state["scheduler"])
        if lead:
            truncate_after(metrics, start)
        logger.info("resumed %s at step %d", out, start)
    elif lead and metrics.exists():
        metrics.unlink()

    def checkpoint(step: int) -> Path:
        sched = scheduler.state_dict()  # plain numbers; lr_lambdas is [None] for a function
        state = {"step": step, "train_config": dataclasses.asdict(train_config), "task": task_to_dict(task),
                 "scheduler": sched}
        if not distributed:
            return save_training_checkpoint(out, model, optimizer, state)
        dist.barrier()
        if lead:
            save_training_checkpoint(out, model, optimizer, state)
        dist.barrier()  # the checkpoint is in place before any rank goes on
        return out / f"checkpoint-{step:08d}"

    def run_eval(step: int) -> dict[str, Any]:
        result = evaluate_task(model, task, seq_len=train_config.seq_len, batches=train_config.eval_batches,
                               batch_size=train_config.batch_size, seed=train_config.seed)
        record = {"kind": "eval", "step": step, **result}  # every rank evaluates its identical replica
        if lead:
            append_record(metrics, record)
        if result["finite"]:
            logger.info("eval step %d: loss %.4f accuracy %.3f", step, result["loss"], result["accuracy"])
        else:
            logger.warning("eval step %d: the evaluation is non-finite (loss %s); no accuracy", step, result["loss"])
        if progress is not None:
            progress(record)
        return record

    model.train()
    tokens = train_config.batch_size * train_config.seq_len
    began = time.perf_counter()
    record: dict[str, Any] = {}
    last_eval: dict[str, Any] | None = None
    saved: Path | None = None
    for step in range(start, stop):
        input_ids, labels = task.batch(batch_generator(train_config.seed, step), train_config.batch_size,
                                       train_config.seq_len)
        input_ids, labels = input_ids.to(device), labels.to(device)
        lr = optimizer.param_groups[0]["lr"]
        try:
            if distributed:
                loss, accuracy = distributed_step(ddp, optimizer, input_ids, labels, rank, world_size, device)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    output = model(input_ids, labels=labels)
                optimizer.zero_grad(set_to_none=True)
                output.loss.backward()
                loss = float(output.loss.detach())
                accuracy = task.accuracy(output.logits.detach().float(), labels)
        except FloatingPointError as err:  # a non-finite value the model itself refuses mid-forward
            raise FloatingPointError(
                f"train: step {step + 1} failed: {str(err).splitlines()[0] if str(err) else 'non-finite value'}; "
                f"the weights were not updated and {checkpoint_note(out)}"
            ) from err
        if not math.isfinite(loss):  # every rank sees the same (all-reduced) loss and stops together
            raise FloatingPointError(
                f"train: the loss is {loss} at step {step + 1}; the weights were not updated and "
                f"{checkpoint_note(out)} (a memory's inner updates can diverge: lower the learning-rate "
                "gate, the chunk size or the momentum, or the outer learning rate)"
            )
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.clip))
        if not math.isfinite(grad_norm):  # DDP all-reduced the gradients: every rank agrees
            raise FloatingPointError(
                f"train: the gradient norm is {grad_norm} at step {step + 1} (the loss, {loss:.4g}, is finite); "
                f"the weights were not updated and {checkpoint_note(out)}"
            )
        optimizer.step()
        broken = _non_finite_parameters(model, distributed)
        if broken:
            more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
            raise FloatingPointError(
                f"train: the update of step {step + 1} made {len(broken)} parameters non-finite "
                f"({', '.join(broken[:3])}{more}); that state is not saved and {checkpoint_note(out)} "
                "(lower the learning rate or the weight decay)"
            )
        scheduler.step()
        done = step + 1
        elapsed = time.perf_counter() - began
        rate = tokens * (done - start) / max(elapsed, 1e-9)
        record = {"kind": "train", "step": done, "loss": loss, "lr": lr, "accuracy": accuracy, "tokens_per_s": rate}
        if lead:
            append_record(metrics, record)
        if progress is not None and (done % train_config.log_every == 0 or done == stop):
            progress({**record, "eta_s": elapsed / (done - start) * (stop - done), "total": stop})
        if train_config.eval_every and done % train_config.eval_every == 0:
            last_eval = run_eval(done)
        if train_config.checkpoint_every and done % train_config.checkpoint_every == 0:
            saved = checkpoint(done)
    if not record:  # resumed at or beyond the end: nothing left to do
        saved = latest_checkpoint(out)
        return {"step": start, "loss": None, "accuracy": None, "eval": None, "checkpoint": str(saved)}
    if last_eval is None or last_eval["step"] != stop:
        last_eval = run_eval(stop)
    if saved is None or not saved.name.endswith(f"{stop:08d}"):
        saved = checkpoint(stop)
    summary = {"step": stop, "loss": record["loss"], "accuracy": record["accuracy"], "eval": last_eval,
               "checkpoint": str(saved)}
    if distributed:
        summary.update(world_size=world_size, replica_max_diff=replica_spread(model))
    return summary


def load_run(out_dir: str | Path) -> tuple[TitansConfig, TrainConfig, Task, int]:
    """``(model_config, train_config, task, step)`` of the newest checkpoint of a run, to resume
    it (e.g. from the command line, which then needs no model or task arguments).

    Raises:
        FileNotFoundError: ``out_dir`` holds no checkpoint, or the checkpoint no trainer state.
        CheckpointError: (a ``ValueError``) the model config or the trainer state is not
            readable or not valid; the message names the file.
    """
    checkpoint = latest_checkpoint(out_dir)
    model_config = load_checkpoint_config(checkpoint)
    state = load_trainer_state(checkpoint)  # verified; an integer "step" >= 0
    state_path = checkpoint / STATE_NAME
    try:
        task_doc, config_doc, step = state["task"], state["train_config"], state["step"]
        if not (isinstance(task_doc, dict) and isinstance(task_doc["options"], dict) and isinstance(config_doc, dict)):
            raise TypeError("task, task.options and train_config must be JSON objects")
        task = make_task(task_doc["name"], **task_doc["options"])
        train_config = TrainConfig(**config_doc)
    except (KeyError, TypeError, ValueError) as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise CheckpointError(f"load_run: {state_path} does not hold a valid trainer state: {detail}") from err
    return model_config, train_config, task, step
