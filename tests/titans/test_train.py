"""The training loop: it learns, resumes on the same trajectory, and checkpoints atomically."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from titans.experiments.evaluate import evaluate
from titans.manifest import MANIFEST_NAME, write_manifest
from titans.experiments.run_checkpoint import latest_checkpoint, load_training_state
from titans.experiments.run_metrics import append_record, read_records
from titans.experiments.tasks import MQAR, NeedleInHaystack, SelectiveCopy
from titans.experiments.train import TrainConfig, batch_generator, load_run, lr_factor, train

from .helpers import tiny

FAST = {"batch_size": 2, "seq_len": 16, "warmup": 2, "log_every": 1, "eval_batches": 1}


def strict_json(text: str) -> object:
    """``json.loads`` that refuses the non-standard constants NaN, Infinity and -Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def losses(out: Path) -> list[tuple[int, float]]:
    records = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


@pytest.mark.parametrize("variant", ["mac", "swa"])
def test_tiny_model_trains_and_reports(tmp_path: Path, variant: str) -> None:
    seen = []
    summary = train(tiny(variant), TrainConfig(steps=3, eval_every=2, **FAST), SelectiveCopy(num_tokens=4),
                    tmp_path, progress=seen.append)
    assert summary["step"] == 3 and math.isfinite(summary["loss"]) and 0 <= summary["accuracy"] <= 1
    assert [r["kind"] for r in seen] == ["train", "train", "eval", "train", "eval"]
    assert all(r["eta_s"] >= 0 and r["tokens_per_s"] > 0 for r in seen if r["kind"] == "train")
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 3]
    assert Path(summary["checkpoint"]) == latest_checkpoint(tmp_path)


def test_loss_falls_on_a_fixed_batch_stream(tmp_path: Path) -> None:
    # a repeated tiny task: the loss of the last steps must be below the first ones
    config = TrainConfig(steps=12, batch_size=4, seq_len=16, lr=1e-2, warmup=1, log_every=12, eval_batches=1)
    train(tiny("swa"), config, NeedleInHaystack(vocab_size=64, depth=0.0), tmp_path)
    trajectory = [loss for _, loss in losses(tmp_path)]
    assert sum(trajectory[-3:]) / 3 < sum(trajectory[:3]) / 3


def test_resume_continues_the_same_loss_trajectory(tmp_path: Path) -> None:
    config = TrainConfig(steps=6, checkpoint_every=2, **FAST)
    task = MQAR(num_pairs=2)
    train(tiny("mag"), config, task, tmp_path / "straight")
    train(tiny("mag"), config, task, tmp_path / "resumed", until=3)
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-00000003"
    with (tmp_path / "resumed" / "metrics.jsonl").open("a") as handle:  # a step logged after the checkpoint
        handle.write(json.dumps({"kind": "train", "step": 4, "loss": 99.0}) + "\n")
        handle.write('{"accuracy": 0.5, "kind": "train", "lo')  # and a line torn by a crash mid-write
    with pytest.warns(RuntimeWarning, match="metrics.jsonl: dropped the torn last line 6"):
        train(tiny("mag"), config, task, tmp_path / "resumed", resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert [s for s, _ in losses(tmp_path / "resumed")] == list(range(1, 7))
    a = load_file(latest_checkpoint(tmp_path / "straight") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "resumed") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_setup(tmp_path: Path) -> None:
    config = TrainConfig(steps=2, **FAST)
    train(tiny("lmm"), config, MQAR(num_pairs=2), tmp_path)
    with pytest.raises(ValueError, match="seed"):
        train(tiny("lmm"), TrainConfig(steps=2, **{**FAST, "seed": 1}), MQAR(num_pairs=2), tmp_path, resume=True)
    with pytest.raises(ValueError, match="task"):
        train(tiny("lmm"), config, MQAR(num_pairs=3), tmp_path, resume=True)
    with pytest.raises(ValueError, match="model_config"):
        train(tiny("mac"), config, MQAR(num_pairs=2), tmp_path, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny("lmm"), config, MQAR(num_pairs=2), tmp_path)
    with pytest.raises(FileNotFoundError):
        train(tiny("lmm"), config, MQAR(num_pairs=2), tmp_path / "empty", resume=True)


def test_a_checkpoint_saved_before_a_task_option_existed_still_resumes(tmp_path: Path) -> None:
    config = TrainConfig(steps=3, **FAST)
    train(tiny("lmm"), config, MQAR(num_pairs=2), tmp_path, until=2)
    checkpoint = latest_checkpoint(tmp_path)
    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text())
    del state["task"]["options"]["queries_at_end"]  # as written before MQAR had the option
    state_path.write_text(json.dumps(state))
    write_manifest(checkpoint, json.loads((checkpoint / MANIFEST_NAME).read_text())["files"])  # edited on purpose
    assert train(tiny("lmm"), config, MQAR(num_pairs=2), tmp_path, resume=True)["step"] == 3
    with pytest.raises(ValueError, match="task"):  # the option at a non-default value is a different task
        train(tiny("lmm"), TrainConfig(steps=4, **FAST), MQAR(num_pairs=2, queries_at_end=True), tmp_path,
              resume=True)


def test_train_stops_before_the_update_when_the_loss_is_not_finite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = sys.modules["titans.experiments.train"]  # the package's attribute `train` is the function
    fresh = module._new_model

    def poisoned(*args: object) -> torch.nn.Module:  # NaN in the last norm: a NaN loss, finite memory
        model = fresh(*args)
        with torch.no_grad():
            model.norm.weight.fill_(math.nan)
        return model

    monkeypatch.setattr(module, "_new_model", poisoned)
    config = TrainConfig(steps=3, checkpoint_every=1, **FAST)
    with pytest.raises(FloatingPointError,
                       match="loss is nan at step 1; the weights were not updated and no checkpoint"):
        train(tiny("lmm"), config, MQAR(num_pairs=2), tmp_path / "bad")
    assert not any((tmp_path / "bad").glob("checkpoint-*"))
    assert read_records(tmp_path / "bad" / "metrics.jsonl") == []


@pytest.mark.parametrize(("bad_step", "note"), [
    (1, "no checkpoint was written"),
    (3, r"the last checkpoint, \S+checkpoint-00000002, is intact"),
])
def test_an_update_that_makes_a_weight_non_finite_stops_the_run_and_is_never_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_step: int, note: str
) -> None:
    step = torch.optim.AdamW.step
    calls = []

    def diverging(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        result = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == bad_step:  # this update overflows one weight, after a finite loss
            with torch.no_grad():
                self.param_groups[0]["params"][-1].view(-1)[0] = math.inf
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=rf"update of step {bad_step} made 1 parameters non-finite "
                       rf"\(head\.weight\); that state is not saved and {note}"):
        train(tiny("lmm"), TrainConfig(steps=4, checkpoint_every=1, **FAST), MQAR(num_pairs=2), out)
    assert [r["step"] for r in read_records(out / "metrics.jsonl")] == list(range(1, bad_step))  # not the failed one
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s:08d}" for s in range(1, bad_step)][-2:]
    if bad_step > 1:
        weights = load_file(latest_checkpoint(out) / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_metrics_lines_are_strict_json_and_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"kind": "eval", "step": 1, "loss": math.nan, "accuracy": None, "finite": False})
    append_record(path, {"kind": "train", "step": 2, "loss": math.inf, "accuracy": 0.5})
    assert [strict_json(line)["loss"] for line in path.read_text().splitlines()] == ["nan", "inf"]
    assert [r["step"] for r in read_records(path)] == [1, 2]
    with path.open("a") as handle:
        handle.write('{"kind": "train", "step": 3, "loss": NaN}\n{"kind": "train", "step": 4}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 3 is not valid JSON"):
        read_records(path)
    path.write_text('{"kind": "train", "step": 1}\n[1, 2]\n{"kind": "train", "step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a metrics record"):
        read_records(path)
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}')  # complete, newline lost
    assert [r["step"] for r in read_records(path)] == [1, 2]


def test_checkpoint_files_are_safetensors_and_json(tmp_path: Path) -> None:
    train(tiny("mal"), TrainConfig(steps=4, checkpoint_every=1, **FAST), MQAR(num_pairs=2), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    # no temporary directories or files, and no lock once the run has ended
    assert names == ["LATEST", "checkpoint-00000003", "checkpoint-00000004", "metrics.jsonl"]
    checkpoint = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "config.json", "manifest.json", "model.safetensors", "optimizer.pt", "trainer_state.json"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["task"] == {"name": "mqar", "options": {
        "alpha": 0.1, "num_pairs": 2, "queries_at_end": False, "vocab_size": 64}}
    model, optimizer_state, _ = load_training_state(checkpoint, torch.device("cpu"))  # weights_only load
    assert optimizer_state["state"] and model.config == tiny("mal")
    model_config, config, task, step = load_run(tmp_path)
    assert (model_config, config.steps, task, step) == (tiny("mal"), 4, MQAR(num_pairs=2), 4)


def test_an_interrupted_write_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(tiny("swa"), TrainConfig(steps=2, **FAST), MQAR(num_pairs=2), tmp_path / "run", until=1)
    before = latest_checkpoint(tmp_path / "run")

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("titans.experiments.run_checkpoint.torch.save", crash)  # dies mid-write of the next checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(tiny("swa"), TrainConfig(steps=2, **FAST), MQAR(num_pairs=2), tmp_path / "run", resume=True)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "run") == before
    load_training_state(before, torch.device("cpu"))
    train(tiny("swa"), TrainConfig(steps=2, **FAST), MQAR(num_pairs=2), tmp_path / "run", resume=True)
    assert not list((tmp_path / "run").glob(".tmp*"))  # the stale temporary directory is cleaned up
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-00000002"


def test_schedule_and_batch_stream() -> None:
    config = TrainConfig(steps=10, warmup=2, min_lr_ratio=0.1)
    factors = [lr_factor(s, config) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0] and all(a >= b for a, b in itertools.pairwise(factors[1:]))
    assert factors[-1] > 0.1 and lr_factor(10, config) == pytest.approx(0.1)
    a = MQAR().batch(batch_generator(0, 5), 2, 16)[0]
    assert torch.equal(a, MQAR().batch(batch_generator(0, 5), 2, 16)[0])
    assert not torch.equal(a, MQAR().batch(batch_generator(0, 6), 2, 16)[0])


def test_train_config_and_vocab_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="TrainConfig.device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="vocab_size"):
        train(tiny("swa"), TrainConfig(steps=1, **FAST), MQAR(vocab_size=128), tmp_path)


def test_evaluate_reports_by_length_and_depth() -> None:
    torch.manual_seed(0)
    from titans import TitansLM

    model = TitansLM(tiny("swa"))
    rows = evaluate(model, NeedleInHaystack(), [8, 16], depths=[0.0, 1.0], batches=1, batch_size=2)
    assert [(r["length"], r["depth"]) for r in rows] == [(8, 0.0), (8, 1.0), (16, 0.0), (16, 1.0)]
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows)
    assert evaluate(model, MQAR(num_pairs=2), [8], batches=1, batch_size=2) == evaluate(
        model, MQAR(num_pairs=2), [8], batches=1, batch_size=2)
    with pytest.raises(ValueError, match="depths"):
        evaluate(model, MQAR(), [16], depths=[0.5])


def test_a_non_finite_value_refused_inside_the_model_stops_training_and_fails_an_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titans import TitansLM
    from titans.experiments.evaluate import evaluate_task

    forward, calls = TitansLM.forward, []

    def refusing(self: TitansLM, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) >= 2:  # as a memory that finds NaN in its own gates
            raise FloatingPointError("memorize: a gate holds nan")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TitansLM, "forward", refusing)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"train: step 2 failed: memorize: a gate holds nan; the weights were "
                       r"not updated and the last checkpoint, \S+checkpoint-00000001, is intact"):
        train(tiny("lmm"), TrainConfig(steps=3, checkpoint_every=1, **FAST), MQAR(num_pairs=2), out)
    model, _, _ = load_training_state(latest_checkpoint(out), torch.device("cpu"))
    result = evaluate_task(model, MQAR(num_pairs=2), seq_len=16, batches=1, batch_size=2, seed=0)
    assert result["finite"] is False and result["accuracy"] is None and math.isnan(result["loss"])
    assert model.training  # restored
