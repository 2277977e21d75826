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
order). Only rank 0 writes metrics and checkpoints and reports progress.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from titans.config import TitansConfig
from titans.evaluate import evaluate_task, json_safe
from titans.model import TitansLM
from titans.run_checkpoint import (
    checkpoint_note,
    latest_checkpoint,
    load_training_state,
    save_training_checkpoint,
)
from titans.tasks import Task, make_task, task_to_dict

__all__ = ["METRICS_NAME", "TrainConfig", "batch_generator", "load_run", "lr_factor", "train", "world"]

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
#: Fields that must match for a resumed run to continue the same trajectory.
_RESUME_FIELDS = ("batch_size", "seq_len", "lr", "weight_decay", "warmup", "min_lr_ratio", "clip", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Args:
        steps: optimizer steps of the whole run (the schedule spans them).
        batch_size, seq_len: sequences per step and tokens per sequence.
        lr: peak AdamW learning rate; weight_decay: AdamW's decoupled decay.
        warmup: steps of linear warmup, then a cosine decay to ``min_lr_ratio * lr`` at ``steps``.
        clip: maximum global gradient norm (``clip_grad_norm_``).
        eval_every: evaluate every this many steps (0: only at the end); eval_batches: batches
            per evaluation.
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


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process: from the initialised process group,
    else from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), else ``(0, 1, 0)``."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local_rank


def _all_sum(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def _replica_spread(model: torch.nn.Module) -> float:
    """The largest difference of any parameter between the ranks (0.0: identical replicas)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max())


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:  # json_safe: a non-finite evaluation's loss as "nan", not bare NaN
        handle.write(json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops records after ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _new_model(config: TitansConfig, seed: int, device: torch.device) -> TitansLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TitansLM(config)
    return model.to(device)


def _resume(
    out_dir: Path, model_config: TitansConfig, config: TrainConfig, task: Task, device: torch.device
) -> tuple[TitansLM, dict[str, Any], dict[str, Any]]:
    model, optimizer_state, state = load_training_state(latest_checkpoint(out_dir), device)
    if model.config.to_dict() != model_config.to_dict():
        raise ValueError(f"train: model_config differs from the checkpoint's in {out_dir}")
    # compare tasks, not their dicts: a checkpoint written before a task gained an option
    # (saved without it) still resumes when the option is at its default
    if make_task(state["task"]["name"], **state["task"]["options"]) != task:
        raise ValueError(f"train: task {task_to_dict(task)} differs from the checkpoint's {state['task']}")
    saved = state["train_config"]
    changed = [name for name in _RESUME_FIELDS if saved[name] != getattr(config, name)]
    if changed:
        raise ValueError(f"train: resuming needs the same TrainConfig fields {changed} as the checkpoint")
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
) -> dict[str, Any]:
    """Trains a :class:`TitansLM` of ``model_config`` on ``task``; writes into ``out_dir``.

    Args:
        resume: continue from the newest checkpoint in ``out_dir`` (same model, task, seed and
            optimisation settings; ``steps`` may grow).
        until: stop (with a checkpoint) after this many steps although the schedule spans
            ``train_config.steps``: an interruption on purpose.
        progress: called with each train record every ``log_every`` steps and each eval record.

    Each step appends ``{"kind": "train", "step", "loss", "accuracy", "lr", "tokens_per_s"}`` to
    ``metrics.jsonl``; evaluations append ``{"kind": "eval", "step", "loss", "accuracy", "finite"}``
    (a non-finite evaluation: ``"accuracy": null`` and the loss as ``"nan"`` or ``"inf"``; see
    :mod:`titans.evaluate`).

    Under ``torchrun`` (``WORLD_SIZE > 1``) it trains with DistributedDataParallel: see the
    module's docstring; ``batch_size`` must be divisible by the number of processes. The
    summary then also holds ``"world_size"`` and ``"replica_max_diff"`` (the largest difference
    of any parameter between the ranks at the end: 0.0 when the replicas stayed identical).

    Raises:
        FloatingPointError: the training loss became NaN or infinite (before that step's
            update, so the checkpoints written so far hold finite weights); the message names
            the newest checkpoint, or says that none was written.

    Returns:
        ``{"step", "loss", "accuracy", "eval", "checkpoint"}`` of the last step.
    """
    rank, world_size, local_rank = world()
    if world_size <= 1:
        return _train(model_config, train_config, task, Path(out_dir), resume, until, progress, 0, 1, None)
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
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
    try:
        summary = _train(model_config, train_config, task, Path(out_dir), resume, until, progress, rank,
                         world_size, device)
        # Free the DDP wrapper (its reducer sits in reference cycles) and let every rank finish
        # its collectives before the group goes: a gloo group torn down at interpreter exit with
        # live references can abort the process ("terminate called without an active exception").
        gc.collect()
        dist.barrier()
        return summary
    finally:
        if owned:
            dist.destroy_process_group()


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
    if model_config.vocab_size < task.vocab_size:
        raise ValueError(
            f"train: the task uses {task.vocab_size} tokens but TitansConfig.vocab_size is {model_config.vocab_size}"
        )
    stop = train_config.steps if until is None else until
    if isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= train_config.steps:
        raise ValueError(f"train: until must be in [1, steps={train_config.steps}], got {until!r}")
    if device is None:
        device = torch.device(train_config.device)
    metrics = out / METRICS_NAME
    start = 0
    if resume:
        model, optimizer_state, state = _resume(out, model_config, train_config, task, device)
        start = int(state["step"])
    else:
        if out.exists() and any(out.glob("checkpoint-*")):
            raise ValueError(f"train: {out} already holds a run (pass resume=True / --resume to continue it)")
        model = _new_model(model_config, train_config.seed, device)
    out.mkdir(parents=True, exist_ok=True)
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
            _truncate_metrics(metrics, start)
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
            _append(metrics, record)
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
        if distributed:
            loss, accuracy = _distributed_step(ddp, optimizer, input_ids, labels, rank, world_size, device)
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                output = model(input_ids, labels=labels)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            loss = float(output.loss.detach())
            accuracy = task.accuracy(output.logits.detach().float(), labels)
        if not math.isfinite(loss):  # every rank sees the same (all-reduced) loss and stops together
            raise FloatingPointError(
                f"train: the loss is {loss} at step {step + 1}; the weights were not updated and "
                f"{checkpoint_note(out)} (a memory's inner updates can diverge: lower the learning-rate "
                "gate, the chunk size or the momentum, or the outer learning rate)"
            )
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        elapsed = time.perf_counter() - began
        rate = tokens * (done - start) / max(elapsed, 1e-9)
        record = {"kind": "train", "step": done, "loss": loss, "lr": lr, "accuracy": accuracy, "tokens_per_s": rate}
        if lead:
            _append(metrics, record)
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
        summary.update(world_size=world_size, replica_max_diff=_replica_spread(model))
    return summary


def _distributed_step(
    ddp: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """Forward and backward of this rank's slice of the global batch; returns the global loss and
    accuracy (equal to one process's on the whole batch). The loss whose gradient DDP averages is
    ``world_size * (sum of this rank's token losses) / (scored tokens of all ranks)``, so the
    averaged gradient is that of the mean over every scored token of the global batch, however
    the scored tokens fall between the ranks."""
    rows = input_ids.shape[0] // world_size
    part = slice(rank * rows, (rank + 1) * rows)
    input_ids, labels = input_ids[part], labels[part]
    scored = labels != -100
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = ddp(input_ids).logits
        flat = logits.flatten(0, 1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        token_sum = F.cross_entropy(flat, labels.flatten(), ignore_index=-100, reduction="sum")
    correct = ((logits.detach().argmax(-1) == labels) & scored).sum()
    totals = _all_sum(torch.stack([scored.sum(), correct]).to(torch.float64))  # exact integers
    count = totals[0].clamp_min(1)
    (token_sum * (world_size / count.to(token_sum.dtype))).backward()
    loss = float(_all_sum(token_sum.to(torch.float64)) / count)
    return loss, float(totals[1] / count)


def load_run(out_dir: str | Path) -> tuple[TitansConfig, TrainConfig, Task, int]:
    """``(model_config, train_config, task, step)`` of the newest checkpoint of a run, to resume
    it (e.g. from the command line, which then needs no model or task arguments)."""
    checkpoint = latest_checkpoint(out_dir)
    document = json.loads((checkpoint / "config.json").read_text())
    document.pop("dtype", None)
    model_config = TitansConfig.from_json(json.dumps(document))
    state_path = checkpoint / "trainer_state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path} does not exist (not a training checkpoint)")
    state = json.loads(state_path.read_text())
    task = make_task(state["task"]["name"], **state["task"]["options"])
    return model_config, TrainConfig(**state["train_config"]), task, int(state["step"])
