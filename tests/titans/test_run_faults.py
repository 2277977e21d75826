"""Fault injection: ``titans train`` killed by a real external SIGKILL at random points (in a step,
in a checkpoint write, ...) and resumed each time ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from titans import TitansConfig
from titans.experiments.run_checkpoint import latest_checkpoint
from titans.experiments.run_lock import LOCK_NAME
from titans.experiments.tasks import make_task
from titans.experiments.train import TrainConfig, train

STEPS = 24
KILLS = 3
FLAGS = ["train", "-q", "--variant", "swa", "--task", "mqar", "--task-arg", "num_pairs=2", "--batch-size", "2",
         "--seq-len", "16", "--warmup", "2", "--eval-batches", "1", "--eval-every", "5", "--checkpoint-every", "1",
         "--seed", "3", "--steps", str(STEPS)]
CONFIG = TrainConfig(steps=STEPS, batch_size=2, seq_len=16, warmup=2, eval_batches=1, eval_every=5,
                     checkpoint_every=1, seed=3)


def environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as the in-process reference run
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def logged_step(out: Path) -> int:
    """The newest training step in ``metrics.jsonl`` (whole lines only: the file is being written)."""
    path = out / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    steps = [json.loads(line)["step"] for line in text.split("\n")[:-1] if '"kind": "train"' in line]
    return max(steps, default=0)


def saved_step(out: Path) -> int:
    return int((out / "LATEST").read_text().removeprefix("checkpoint-")) if (out / "LATEST").is_file() else 0


def trajectory(out: Path) -> list[tuple[str, int, object, object]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r["loss"], r["accuracy"]) for r in records]


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path: Path) -> None:
    rng = random.Random(15)
    out = tmp_path / "killed"
    kills, lives = 0, 0
    while True:
        resume = saved_step(out) > 0
        start = saved_step(out)
        lives += 1
        process = subprocess.Popen([sys.executable, "-m", "titans", *FLAGS, "--out", str(out),
                                    *(["--resume"] if resume else [])],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
        if kills < KILLS:
            # Kill after a random number of new steps (1-3: every life makes progress, and three
            # lives end well before the last step however fast the machine), then a random
            # few milliseconds on: mid-step, mid-checkpoint, mid-metrics line, ...
            target = start + rng.randint(1, 3)
            deadline = time.monotonic() + 120
            while logged_step(out) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                kills += 1
                continue
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        break
    assert kills == KILLS and lives == KILLS + 1, (kills, lives)  # the run did not finish before its kills
    assert json.loads(stdout)["step"] == STEPS
    assert not (out / LOCK_NAME).exists()

    config = TitansConfig.preset("tiny", variant="swa")
    straight = tmp_path / "straight"
    train(config, CONFIG, make_task("mqar", vocab_size=config.vocab_size, num_pairs=2), straight)

    assert trajectory(out) == trajectory(straight)  # every loss and accuracy, each step once
    assert [s for kind, s, _, _ in trajectory(out) if kind == "train"] == list(range(1, STEPS + 1))
    a, b = latest_checkpoint(out), latest_checkpoint(straight)
    assert a.name == b.name == f"checkpoint-{STEPS:08d}"
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    optim_a = torch.load(a / "optimizer.pt", weights_only=True)
    optim_b = torch.load(b / "optimizer.pt", weights_only=True)
    assert optim_a["param_groups"] == optim_b["param_groups"]
    assert optim_a["state"].keys() == optim_b["state"].keys()
    for index, state in optim_a["state"].items():
        assert state.keys() == optim_b["state"][index].keys()
        assert all(torch.equal(state[key], optim_b["state"][index][key]) for key in state)
    assert json.loads((a / "trainer_state.json").read_text()) == json.loads((b / "trainer_state.json").read_text())
