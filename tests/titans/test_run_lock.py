"""One run per output directory: a second run is refused while the first lives; a lock left by a
killed run is taken over. Real processes, as the lock is an OS lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from titans.experiments.run_lock import LOCK_NAME, RunLock, RunLockedError

HOLD = ("import sys, time; from titans.experiments.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")
TRAIN = ["train", "-q", "--variant", "swa", "--task", "mqar", "--task-arg", "num_pairs=2", "--batch-size", "2",
         "--seq-len", "16", "--warmup", "1", "--eval-batches", "1"]


def environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def wait_for(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_second_lock_in_the_same_directory_is_refused_until_released(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    first.acquire()
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunLockedError, match=rf"train: {tmp_path} is in use by another run \(pid {os.getpid()}, "):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()  # a clean end leaves no lock file
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_of_a_living_process_is_refused_and_of_a_killed_one_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=environment())
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {holder.pid}, holding "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / LOCK_NAME).read_text() == f"{holder.pid}\n"  # stale: its holder is dead
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_titans_train_refuses_a_second_run_into_the_same_out_and_takes_over_a_stale_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "titans", *TRAIN, "--out", str(out)]
    first = subprocess.Popen([*command, "--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=environment())
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file() or first.poll() is not None, "the first run to train")
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        second = subprocess.run([*command, "--steps", "2"], capture_output=True, text=True, timeout=120,
                                check=False, env=environment())
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr == (f"titans: error: train: {out} is in use by another run (pid {first.pid}, holding "
                                 f"{out / LOCK_NAME}); wait for it to finish, or write to another directory\n")
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert (out / LOCK_NAME).is_file()  # left behind by the killed run
    third = subprocess.run([*command, "--steps", "2"], capture_output=True, text=True, timeout=120, check=False,
                           env=environment())
    assert third.returncode == 0, third.stderr
    assert not (out / LOCK_NAME).exists()
