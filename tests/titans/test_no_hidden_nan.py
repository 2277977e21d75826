"""No hidden NaN: a non-finite evaluation keeps its loss and has no accuracy (NaN logits argmax to
token 0, which must not count as predictions); reports say ``diverged at length N`` and have a
loss column; ``titans eval`` exits with 1; every JSON output stays valid JSON; a run stopped on a
NaN loss names its checkpoint only when there is one."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_model

import titans.experiments.ablation
import titans.experiments.cli
from titans import TitansLM, save_pretrained
from titans.experiments.ablation import parse_spec, run_ablation
from titans.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from titans.experiments.cli import main
from titans.experiments.demo import DemoSettings, run_demo
from titans.experiments.evaluate import evaluate, json_safe
from titans.manifest import write_manifest
from titans.experiments.report import accuracy_at, diverged_lengths, markdown_table, plot_results
from titans.experiments.tasks import MQAR
from titans.experiments.train import TrainConfig, train

from .helpers import tiny

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL = ["--task", "mqar", "--task-arg", "num_pairs=2", "--lengths", "8,16", "--batches", "1", "--batch-size", "2"]


def strict_json(text: str) -> Any:
    """``json.loads`` that rejects the bare ``NaN`` / ``Infinity`` Python's json writes by default."""

    def reject(constant: str) -> None:
        raise ValueError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def nan_beyond(model: TitansLM, limit: int) -> TitansLM:
    """``model`` whose logits are NaN for sequences longer than ``limit`` tokens (as a memory whose
    inner updates diverge over long inputs); shorter ones are untouched."""
    forward = model.forward

    def patched(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output = forward(input_ids, *args, **kwargs)
        if input_ids.shape[1] <= limit:
            return output
        return dataclasses.replace(output, logits=torch.full_like(output.logits, math.nan))

    model.forward = patched  # an instance attribute: nn.Module.__call__ finds it first
    return model


def saved_model(path: Path, *, poison: float | None = None) -> Path:
    """A tiny ``swa`` checkpoint; ``poison`` fills its output head with that value (NaN, inf).

    ``save_pretrained`` refuses non-finite weights, so a poisoned checkpoint is forged the way a
    model that diverged elsewhere would arrive: its weights file rewritten, its manifest renewed."""
    torch.manual_seed(0)
    model = TitansLM(tiny("swa"))
    save_pretrained(model, path)
    if poison is not None:
        with torch.no_grad():
            model.head.weight.fill_(poison)
        save_model(model, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        write_manifest(path, [CONFIG_NAME, WEIGHTS_NAME])
    return path


def test_a_non_finite_evaluation_has_its_loss_and_no_accuracy() -> None:
    torch.manual_seed(0)
    model = nan_beyond(TitansLM(tiny("swa")), limit=8)
    short, long = evaluate(model, MQAR(num_pairs=2), [8, 16], batches=1, batch_size=2)
    assert short["finite"] and math.isfinite(short["loss"]) and 0 <= short["accuracy"] <= 1
    assert not long["finite"] and math.isnan(long["loss"]) and long["accuracy"] is None
    document = strict_json(json.dumps(json_safe([short, long]), allow_nan=False))
    assert document[1]["loss"] == "nan" and document[1]["accuracy"] is None
    assert json_safe({"a": [math.inf, -math.inf, 1.5, None]}) == {"a": ["inf", "-inf", 1.5, None]}


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_titans_eval_of_a_non_finite_checkpoint_exits_1_without_accuracies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], poison: float
) -> None:
    checkpoint = saved_model(tmp_path / "poisoned", poison=poison)
    assert main(["eval", "--checkpoint", str(checkpoint), *EVAL]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and "accuracy" not in captured.out, captured.out
    assert "loss nan  diverged at length 8" in lines[0] and "diverged at length 16" in lines[1]
    assert captured.err.startswith("titans: error: eval:") and captured.err.count("\n") == 1
    assert "non-finite" in captured.err and "8, 16" in captured.err

    assert main(["eval", "--checkpoint", str(checkpoint), *EVAL, "--json"]) == 1
    rows = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["length"], r["loss"], r["accuracy"], r["finite"]) for r in rows] == [
        (8, "nan", None, False), (16, "nan", None, False)]


def test_titans_eval_marks_only_the_lengths_that_diverge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = saved_model(tmp_path / "model")
    assert main(["eval", "--checkpoint", str(checkpoint), *EVAL]) == 0  # finite: status 0, accuracies
    captured = capsys.readouterr()
    assert captured.out.count("accuracy") == 2 and "diverged" not in captured.out and captured.err == ""

    load = titans.experiments.cli.load_pretrained
    monkeypatch.setattr(titans.experiments.cli, "load_pretrained", lambda *a, **k: nan_beyond(load(*a, **k), limit=8))
    assert main(["eval", "--checkpoint", str(checkpoint), *EVAL]) == 1
    captured = capsys.readouterr()
    short, long = captured.out.splitlines()
    assert "accuracy" in short and "diverged" not in short
    assert "accuracy" not in long and "loss nan  diverged at length 16" in long
    assert "at length 16;" in captured.err


def spec_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "task": "mqar",
        "task_args": {"num_pairs": 2, "queries_at_end": True},
        "model": {"window": 4},
        "train": {"steps": 1, "batch_size": 2, "seq_len": 16, "warmup": 1, "eval_batches": 1},
        "eval": {"lengths": [16, 32], "batches": 1, "batch_size": 2},
        "runs": [{"name": "swa", "variant": "swa"}],
    }
    document.update(changes)
    return document


def test_an_ablation_reports_the_loss_and_marks_a_non_finite_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    load = titans.experiments.ablation.load_pretrained
    monkeypatch.setattr(titans.experiments.ablation, "load_pretrained", lambda *a, **k: nan_beyond(load(*a, **k), limit=16))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec_document()))
    out = tmp_path / "out"
    assert main(["ablate", str(spec_file), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    head, _, row = printed.splitlines()[:3]
    assert "acc @ 16" in head and "loss @ 16" in head and "loss @ 32" in head
    assert "diverged at length 32" in row and "| nan |" in row and "nan%" not in printed
    assert "diverged at length 32" in (out / "report.md").read_text()
    assert (out / "ablation.png").read_bytes()[:8] == PNG_MAGIC

    result = strict_json((out / "runs" / "swa" / "result.json").read_text())
    (saved,) = strict_json((out / "results.json").read_text())
    for r in (result, saved):
        assert r["eval"][0]["finite"] and 0 <= r["eval"][0]["accuracy"] <= 1
        assert r["eval"][1] == {"length": 32, "loss": "nan", "accuracy": None, "finite": False}
        assert accuracy_at(r, 32) is None and accuracy_at(r, 16) == r["eval"][0]["accuracy"]
        assert diverged_lengths(r) == [32]

    again = run_ablation(parse_spec(spec_document()), out)  # reused from result.json as it is
    assert again[0]["eval"] == result["eval"]


def test_a_result_written_with_a_bare_nan_is_read_as_diverged(tmp_path: Path) -> None:
    spec = parse_spec(spec_document())
    (result,) = run_ablation(spec, tmp_path)
    path = tmp_path / "runs" / "swa" / "result.json"
    old = json.loads(path.read_text())
    old["eval"] = [{"length": 16, "loss": 3.2, "accuracy": 0.5}, {"length": 32, "loss": math.nan, "accuracy": 0.0}]
    path.write_text(json.dumps(old))  # what run_one wrote before the fix: NaN logits counted as token 0
    (reused,) = run_ablation(spec, tmp_path)
    assert accuracy_at(reused, 16) == 0.5 and accuracy_at(reused, 32) is None
    assert "diverged at length 32" in markdown_table([reused])
    strict_json((tmp_path / "results.json").read_text())
    assert plot_results([reused], tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC


def test_the_demo_gives_no_recall_where_the_memory_models_evaluation_diverges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = titans.experiments.ablation.load_pretrained

    def load_memory_nan_at_64(*args: Any, **kwargs: Any) -> TitansLM:
        model = load(*args, **kwargs)
        return nan_beyond(model, limit=32) if model.config.variant == "mag" else model

    monkeypatch.setattr(titans.experiments.ablation, "load_pretrained", load_memory_nan_at_64)
    summary = run_demo(tmp_path, DemoSettings(steps=1, lengths=(32, 64), eval_batches=1))
    report = Path(summary["report"]).read_text()
    assert "nan%" not in report and "diverged at length 64" in report
    (row,) = [line for line in report.splitlines() if line.startswith("| 64 | 48 |")]
    assert row.startswith("| 64 | 48 | diverged at length 64 |") and row.endswith("| - |")
    assert "memory-mag's evaluation is non-finite (NaN or infinite) at length 64" in report
    assert "NOT at" in report and summary["margins"][64] is None and summary["margins"][32] is not None
    strict_json((tmp_path / "results.json").read_text())


# A huge outer learning rate: the first step is finite; its update makes the weights ~1e30, so
# the second step's logits overflow. No memory involved (swa): only the training loop is tested.
EXPLODING = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup=0, lr=1e30, eval_batches=1)


def test_a_nan_stop_without_a_checkpoint_says_none_was_written(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match="loss is (nan|inf) at step 2") as info:
        train(tiny("swa"), EXPLODING, MQAR(num_pairs=2), tmp_path / "run")
    message = str(info.value)
    assert f"no checkpoint was written to {tmp_path / 'run'}" in message and "intact" not in message
    assert not any((tmp_path / "run").glob("checkpoint-*"))


def test_a_nan_stop_names_the_checkpoint_that_is_intact(tmp_path: Path) -> None:
    config = dataclasses.replace(EXPLODING, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="loss is (nan|inf) at step 2") as info:
        train(tiny("swa"), config, MQAR(num_pairs=2), tmp_path / "run")
    assert f"the last checkpoint, {tmp_path / 'run' / 'checkpoint-00000001'}, is intact" in str(info.value)


def test_titans_train_stopping_on_nan_or_ctrl_c_tells_the_truth_about_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    args = ["train", "--variant", "swa", "--task", "mqar", "--task-arg", "num_pairs=2", "--steps", "2",
            "--warmup", "0", "--lr", "1e30", "--batch-size", "2", "--seq-len", "16", "--out", str(out), "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no checkpoint was written to {out}" in err and "intact" not in err, err

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(titans.experiments.cli, "train", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"no checkpoint was written to {out}" in err and "resume" not in err, err
