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
