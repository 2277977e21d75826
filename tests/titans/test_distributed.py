"""Training under ``torchrun``: two CPU processes (gloo) reproduce one process with the same
global batch, and their replicas stay identical."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from titans.config import TitansConfig
from titans.experiments.run_checkpoint import latest_checkpoint
from titans.experiments.tasks import make_task
from titans.experiments.train import TrainConfig, _new_model, batch_generator, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is unavailable")

ARGS = ["--variant", "mac", "--task", "mqar", "--task-arg", "num_pairs=2", "--preset", "tiny", "--steps", "3",
        "--batch-size", "4", "--seq-len", "16", "--warmup", "1", "--checkpoint-every", "2", "--eval-batches", "1",
        "-q"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *args]
    result = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process(tmp_path: Path) -> None:
    result = torchrun(["-m", "titans", "train", *ARGS, "--out", str(tmp_path / "two")], tmp_path)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # only rank 0 prints the summary
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["replica_max_diff"] == 0.0  # identical replicas

    model_config = TitansConfig.preset("tiny")
    config = TrainConfig(steps=3, batch_size=4, seq_len=16, warmup=1, checkpoint_every=2, eval_batches=1)
    task = make_task("mqar", vocab_size=model_config.vocab_size, num_pairs=2)
    one = train(dataclasses.replace(model_config, variant="mac"), config, task, tmp_path / "one")

    two_records, one_records = records(tmp_path / "two"), records(tmp_path / "one")
    assert [(r["kind"], r["step"]) for r in two_records] == [(r["kind"], r["step"]) for r in one_records]
    for a, b in zip(two_records, one_records, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
    assert summary["loss"] == pytest.approx(one["loss"], rel=1e-5)

    # checkpoints written by rank 0 alone: the mid-run one and the last
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint-*")) == [
        "checkpoint-00000002", "checkpoint-00000003"]
    a = load_file(latest_checkpoint(tmp_path / "two") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        # float32 gradients summed in another order differ by ~1e-7; AdamW divides by the root of
        # the second moment, which magnifies such differences in near-zero gradient entries
        # (seen: 2.3e-6 in one of 2048 weights after 3 steps), so the bound is 1e-5, well under
        # the 1e-3 a single step moves a weight.
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)


WORKER = textwrap.dedent("""
    import gc, sys, torch, torch.distributed as dist
    from titans.config import TitansConfig
    from titans.experiments.tasks import make_task
    from titans.experiments.distributed import distributed_step
    from titans.experiments.train import _new_model, batch_generator
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = TitansConfig.preset("tiny")
    model = _new_model(config, 0, torch.device("cpu"))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters())
    task = make_task("mqar", vocab_size=config.vocab_size, num_pairs=3)
    input_ids, labels = task.batch(batch_generator(0, 0), 4, 16)
    labels[:2, : labels.shape[1] // 2] = -100  # rank 0's rows score fewer tokens than rank 1's
    loss, accuracy = distributed_step(ddp, optimizer, input_ids, labels, rank, world, torch.device("cpu"))
    grads = {name: p.grad for name, p in model.named_parameters()}
    torch.save({"loss": loss, "accuracy": accuracy, "grads": grads}, f"{sys.argv[1]}/rank{rank}.pt")
    del ddp
    gc.collect()  # as titans.experiments.train does: no live DDP reducer when the gloo group goes
    dist.barrier()
    dist.destroy_process_group()
""")


def test_uneven_scored_tokens_give_the_global_mean_gradient(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text(WORKER)
    torchrun([str(tmp_path / "worker.py"), str(tmp_path)], tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    config = TitansConfig.preset("tiny")
    model = _new_model(config, 0, torch.device("cpu"))
    task = make_task("mqar", vocab_size=config.vocab_size, num_pairs=3)
    input_ids, labels = task.batch(batch_generator(0, 0), 4, 16)
    labels[:2, : labels.shape[1] // 2] = -100
    assert (labels[:2] != -100).sum() != (labels[2:] != -100).sum()  # the case this test is about
    output = model(input_ids, labels=labels)
    output.loss.backward()
    for result in ranks:
        assert result["loss"] == pytest.approx(float(output.loss.detach()), rel=1e-5)
        assert result["accuracy"] == pytest.approx(task.accuracy(output.logits.detach(), labels), abs=1e-9)
        for name, param in model.named_parameters():
            torch.testing.assert_close(result["grads"][name], param.grad, rtol=1e-5, atol=1e-7)
    assert all(torch.equal(ranks[0]["grads"][k], ranks[1]["grads"][k]) for k in ranks[0]["grads"])


def test_batch_must_divide_among_the_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    task = make_task("mqar", vocab_size=TitansConfig.preset("tiny").vocab_size, num_pairs=2)
    with pytest.raises(ValueError, match="divisible"):
        train(TitansConfig.preset("tiny"), TrainConfig(steps=1, batch_size=4, seq_len=16), task, tmp_path)
    assert not tmp_path.joinpath("metrics.jsonl").exists()


def test_a_missing_peer_is_a_clear_timeout_not_a_hang(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    command = [sys.executable, "-m", "titans", "train", *ARGS, "--dist-timeout", "2", "--out", str(tmp_path / "x")]
    began = time.monotonic()
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - began < 30
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "titans: error: train: the 2 processes did not meet within 2 s (this is RANK=0 of WORLD_SIZE=2, "
        f"MASTER_ADDR=127.0.0.1, MASTER_PORT={env['MASTER_PORT']}): start every process"), result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("env", "needle"), [
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 asks for 2 processes but MASTER_ADDR and MASTER_PORT are not set"),
    ({"WORLD_SIZE": "two"}, "the environment variable WORLD_SIZE must be an integer, got 'two'"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2, WORLD_SIZE=2"),
])
def test_a_bad_distributed_environment_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    task = make_task("mqar", vocab_size=TitansConfig.preset("tiny").vocab_size, num_pairs=2)
    with pytest.raises(ValueError, match=re.escape(needle)):
        train(TitansConfig.preset("tiny"), TrainConfig(steps=1, batch_size=4, seq_len=16), task, tmp_path / "x")
    with pytest.raises(ValueError, match="dist_timeout"):
        train(TitansConfig.preset("tiny"), TrainConfig(steps=1, batch_size=4, seq_len=16), task, tmp_path / "x",
              dist_timeout=math.inf)
    assert not (tmp_path / "x").exists()
