"""Runs worker commands of a benchmark script a few at a time, one CPU thread each."""

from __future__ import annotations

import os
import subprocess
import time


def run_parallel(commands: list[list[str]], jobs: int) -> None:
    """Runs every command, at most ``jobs`` at once, each with ``OMP_NUM_THREADS=1``; raises
    ``SystemExit`` naming the first command that fails."""
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < jobs:
            command = pending.pop(0)
            running.append((subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}), command))
        time.sleep(1)
        for proc, command in list(running):
            if proc.poll() is not None:
                running.remove((proc, command))
                if proc.returncode:
                    raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}")


def train_runs(spec, names: list[str], out, *, jobs: int, worker: str | None, argv) -> bool:
    """The shared start of the recall scripts. In a worker process (``worker`` names a run of
    ``spec``): trains that run into ``out/runs/NAME`` on one thread and returns ``True`` (the
    caller stops). Otherwise sets the threads for ``jobs`` runs at once and, with ``jobs > 1``,
    trains the runs ``names`` in worker processes started as ``argv(name)``; returns ``False``
    (the caller reports, reusing the finished runs)."""
    import torch

    from titans.experiments.ablation import run_one

    if worker:
        torch.set_num_threads(1)
        run = next(r for r in spec.runs if r.name == worker)
        run_one(run, spec, out / "runs" / run.name)
        return True
    torch.set_num_threads(max(1, 2 // jobs))
    if jobs > 1:
        run_parallel([argv(name) for name in names], jobs)
    return False
