"""The many-process side of :func:`titans.experiments.train.train`: the process group, the sharded step and
the checks that keep the ranks together.

Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) every rank draws the same global
batch and takes its contiguous slice of ``batch_size // world_size`` rows (:func:`distributed_step`).
The process group forms over ``env://`` within a timeout (:func:`join_process_group`), so a
missing peer is one clear ``TimeoutError`` instead of a silent hang; the same timeout bounds
each collective operation. Rank 0 holds the run directory's lock (:func:`lock_run_everywhere`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from titans.experiments.run_lock import RunLock, lock_run_directory

__all__ = [
    "DIST_TIMEOUT",
    "all_sum",
    "distributed_step",
    "join_process_group",
    "lock_run_everywhere",
    "replica_spread",
    "world",
]

#: Seconds the processes of a distributed run wait for each other (rendezvous and collectives).
DIST_TIMEOUT = 300.0


def _env_int(name: str, default: str) -> int:
    text = os.environ.get(name, default)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"train: the environment variable {name} must be an integer, got {text!r}") from None


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process: from the initialised process group,
    else from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), else ``(0, 1, 0)``.

    Raises:
        ValueError: ``RANK``, ``WORLD_SIZE`` or ``LOCAL_RANK`` is not an integer, or not
            ``WORLD_SIZE >= 1``, ``0 <= RANK < WORLD_SIZE`` and ``LOCAL_RANK >= 0``.
    """
    local_rank = _env_int("LOCAL_RANK", "0")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    rank, world_size = _env_int("RANK", "0"), _env_int("WORLD_SIZE", "1")
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"train: the environment has RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}; "
                         "needs WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return rank, world_size, local_rank


def join_process_group(backend: str, rank: int, world_size: int, timeout: float) -> None:
    """``init_process_group`` over ``env://`` that gives up after ``timeout`` seconds.

    Args:
        backend: ``"gloo"`` or ``"nccl"``.
        rank, world_size: this process's rank and the number of processes.
        timeout: seconds to wait for the peers; also the limit of each collective operation.

    Raises:
        ValueError: ``MASTER_ADDR`` or ``MASTER_PORT`` is not set.
        TimeoutError: the processes did not meet within ``timeout`` (the message names
            ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``).
    """
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"train: WORLD_SIZE={world_size} asks for {world_size} processes but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set (launch with torchrun, or unset WORLD_SIZE to train "
            "in one process)"
        )
    try:
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout))
    except dist.DistError as err:  # DistStoreError (rank 0 alone), DistNetworkError (no rank 0)
        where = f"MASTER_ADDR={os.environ['MASTER_ADDR']}, MASTER_PORT={os.environ['MASTER_PORT']}"
        said = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TimeoutError(
            f"train: the {world_size} processes did not meet within {timeout:g} s (this is RANK={rank} of "
            f"WORLD_SIZE={world_size}, {where}): start every process (torchrun does), check the address and "
            f"port, or raise --dist-timeout; torch says: {said}"
        ) from err


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over the ranks (a new tensor)."""
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def replica_spread(model: torch.nn.Module) -> float:
    """The largest difference of any parameter between the ranks (0.0: identical replicas)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max())


def lock_run_everywhere(out: Path, resume: bool, rank: int, device: torch.device) -> RunLock | None:
    """Rank 0 takes the run directory's lock (:func:`titans.experiments.run_lock.lock_run_directory`); every
    rank learns whether it could, and all raise together if not. Returns rank 0's lock."""
    lock, error = None, None
    if rank == 0:
        try:
            lock = lock_run_directory(out, resume=resume)
        except (ValueError, OSError) as err:
            error = err
    failed = torch.tensor([0 if error is None else 1], device=device)
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if int(failed.item()):
        raise ValueError(f"train: rank 0 could not take the run directory {out} (see its error)")
    return lock


def distributed_step(
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
    totals = all_sum(torch.stack([scored.sum(), correct]).to(torch.float64))  # exact integers
    count = totals[0].clamp_min(1)
    (token_sum * (world_size / count.to(token_sum.dtype))).backward()
    loss = float(all_sum(token_sum.to(torch.float64)) / count)
    return loss, float(totals[1] / count)
