"""Ablations: the spec's validation, runs trained and evaluated, finished runs reused, an
interrupted run resumed onto the uninterrupted trajectory, the table and the plot, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from titans import TitansLM
from titans.experiments.ablation import load_spec, parse_spec, run_ablation, run_one
from titans.experiments.cli import main
from titans.experiments.report import accuracy_at, diverged_lengths, markdown_table, plot_results
from titans.experiments.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def spec_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "task": "mqar",
        "task_args": {"num_pairs": 2, "queries_at_end": True},
        "model": {"memory_model": "linear", "window": 4},
        "train": {"steps": 3, "batch_size": 2, "seq_len": 16, "warmup": 1, "log_every": 1, "eval_batches": 1},
        "eval": {"lengths": [16, 32], "batches": 1, "batch_size": 2},
        "runs": [{"name": "lmm", "variant": "lmm"}, {"variant": "swa"}],
    }
    document.update(changes)
    return document


def test_parse_spec_builds_runs_with_shared_fields_and_default_names() -> None:
    spec = parse_spec(spec_document())
    assert [run.name for run in spec.runs] == ["lmm", "swa"]
    assert [run.model.variant for run in spec.runs] == ["lmm", "swa"]
    assert all(run.model.window == 4 and run.model.memory_model == "linear" for run in spec.runs)
    assert spec.task.num_pairs == 2 and spec.task.queries_at_end
    assert spec.train.steps == 3 and spec.lengths == (16, 32) and spec.eval_batch_size == 2


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"runs": []}, "'runs'"),
        ({"runz": []}, "unknown keys ['runz']"),
        ({"runs": [{"variant": "mac", "memory_modle": "mlp"}]}, "memory_modle"),
        ({"runs": [{"name": "a", "variant": "mac"}, {"name": "a", "variant": "swa"}]}, "used twice"),
        ({"runs": [{"name": "../up", "variant": "mac"}]}, "names a directory"),
        ({"runs": [{"variant": "nope"}]}, "variant"),
        ({"runs": ["mac"]}, "runs[0] must be a JSON object"),
        ({"task": "nope"}, "nope"),
        ({"task_args": {"bogus": 1}}, "bogus"),
        ({"train": {"stepz": 1}}, "stepz"),
        ({"train": {"steps": 0}}, "steps"),
        ({"eval": {"lengths": []}}, "eval.lengths"),
        ({"eval": {"lengths": [16], "batches": 0}}, "eval.batches"),
        ({"eval": {"lenghts": [16]}}, "lenghts"),
        ({"preset": "huge"}, "huge"),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
        ({"seeds": 3}, "'seeds' must be a non-empty list"),
        ({"seeds": [0, -1]}, "must be an integer >= 0, got -1"),
        ({"seeds": [1, 1]}, "repeats a seed"),
        ({"runs": [{"variant": "swa", "seeds": [0.5]}]}, "runs[0].seeds"),
    ],
)
def test_bad_specs_raise_value_errors_naming_the_problem(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_spec(spec_document(**changes))
    assert needle in str(info.value)


def test_load_spec_reports_missing_files_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_spec(bad)


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.json"))


def test_example_specs_parse() -> None:
    """Every ablation file in examples/ (the docs' commands) is a valid spec whose models build."""
    assert len(EXAMPLES) >= 3, EXAMPLES  # the scan finds the files
    for path in EXAMPLES:
        spec = load_spec(path)
        assert spec.runs, path
        for run in spec.runs:
            assert isinstance(TitansLM(run.model), TitansLM), (path, run.name)


def test_run_ablation_trains_evaluates_and_reuses_finished_runs(tmp_path: Path) -> None:
    spec = parse_spec(spec_document())
    results = run_ablation(spec, tmp_path)
    assert [r["name"] for r in results] == ["lmm", "swa"]
    for r in results:
        run_dir = tmp_path / "runs" / r["name"]
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "train"]
        assert steps == [1, 2, 3]
        assert [row["length"] for row in r["eval"]] == [16, 32]
        assert all(0 <= row["accuracy"] <= 1 for row in r["eval"])
        assert r["parameters"] > 0 and r["tokens_per_s"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in saved] == ["lmm", "swa"] and "identity" not in saved[0]

    metrics = tmp_path / "runs" / "lmm" / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    again = run_ablation(spec, tmp_path)
    assert metrics.stat().st_mtime_ns == stamp  # reused, not retrained
    assert [r["eval"] for r in again] == [r["eval"] for r in results]

    # A run recorded before a config field existed (here: without retention_readout, whose
    # default is the old behaviour) is the same run; a changed field is not.
    result_path = tmp_path / "runs" / "lmm" / "result.json"
    recorded = json.loads(result_path.read_text())
    del recorded["identity"]["model"]["retention_readout"]
    result_path.write_text(json.dumps(recorded))
    run_ablation(spec, tmp_path)
    assert metrics.stat().st_mtime_ns == stamp
    recorded["identity"]["model"]["retention_readout"] = "chunk"
    result_path.write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match="different spec"):
        run_ablation(spec, tmp_path)
    recorded["identity"]["model"].pop("retention_readout")
    result_path.write_text(json.dumps(recorded))

    changed = parse_spec(spec_document(train={**spec_document()["train"], "steps": 4}))
    with pytest.raises(ValueError, match="different spec"):
        run_ablation(changed, tmp_path)


def test_an_interrupted_run_resumes_onto_the_uninterrupted_trajectory(tmp_path: Path) -> None:
    spec = parse_spec(spec_document(runs=[{"name": "lmm", "variant": "lmm"}]))
    run = spec.runs[0]
    whole = run_one(run, spec, tmp_path / "whole")
    train(run.model, spec.train, spec.task, tmp_path / "cut", until=2)  # stopped after 2 of 3 steps
    resumed = run_one(run, spec, tmp_path / "cut")
    assert resumed["loss"] == whole["loss"]
    assert resumed["eval"] == whole["eval"]


def test_markdown_table_and_plot(tmp_path: Path) -> None:
    spec = parse_spec(spec_document())
    results = run_ablation(spec, tmp_path)
    table = markdown_table(results)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(results)
    assert "acc @ 16" in lines[0] and "acc @ 32" in lines[0]
    assert lines[2].startswith("| lmm | lmm |")
    assert accuracy_at(results[0], 32) == results[0]["eval"][1]["accuracy"]
    with pytest.raises(KeyError, match="length 64"):
        accuracy_at(results[0], 64)
    with pytest.raises(ValueError, match="no results"):
        markdown_table([])
    png = plot_results(results, tmp_path / "plot.png",
                       metrics=[tmp_path / "runs" / r["name"] / "metrics.jsonl" for r in results],
                       window=4, train_len=16, chance=0.1, title="test")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000


def _needle_result(name: str, rows: list[tuple[int, float, float, float]]) -> dict[str, Any]:
    """A needle run's result: one evaluation row per (length, depth, accuracy, loss)."""
    return {"name": name, "variant": "mag", "parameters": 10, "loss": 1.0, "accuracy": 0.5, "tokens_per_s": 1.0,
            "train_seconds": 1.0, "changes": [],
            "eval": [{"length": n, "depth": d, "accuracy": a, "loss": loss, "finite": loss == loss}
                     for n, d, a, loss in rows]}


def test_reports_average_the_depths_of_a_length() -> None:
    """A needle evaluation has one row per depth at each length: the report and accuracy_at
    give their mean (not the first depth's), and any non-finite depth makes the length diverged."""
    r = _needle_result("a", [(16, 0.0, 1.0, 0.1), (16, 1.0, 0.5, 0.3), (32, 0.0, 0.25, 0.5), (32, 1.0, 0.75, 0.7)])
    assert accuracy_at(r, 16) == pytest.approx(0.75) and accuracy_at(r, 32) == pytest.approx(0.5)
    lines = markdown_table([r]).strip().splitlines()
    assert lines[0].count("acc @ 16") == 1 and lines[0].count("acc @ 32") == 1
    assert lines[2].endswith("| 75.0% | 50.0% | 0.200 | 0.600 |"), lines[2]
    bad = _needle_result("b", [(16, 0.0, 1.0, 0.1), (16, 1.0, 0.5, float("nan"))])
    assert accuracy_at(bad, 16) is None and diverged_lengths(bad) == [16]
    assert markdown_table([bad]).strip().splitlines()[2].endswith("| diverged at length 16 | nan |")


def test_titans_ablate_writes_table_plot_and_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "ablation.json"
    spec_file.write_text(json.dumps(spec_document()))
    out = tmp_path / "out"
    assert main(["ablate", str(spec_file), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| lmm | lmm |" in printed and "| swa | swa |" in printed and "ablation.png" in printed
    assert (out / "ablation.png").read_bytes()[:8] == PNG_MAGIC
    assert "| lmm | lmm |" in (out / "report.md").read_text()
    assert len(json.loads((out / "results.json").read_text())) == 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "does not exist"), ("[1, 2", "not valid JSON"), ('{"runs": [{"variant": "bogus"}]}', "bogus")],
)
def test_titans_ablate_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, needle: str
) -> None:
    spec_file = tmp_path / "spec.json"
    if content is not None:
        spec_file.write_text(content)
    assert main(["ablate", str(spec_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("titans: error:") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_the_example_file_and_the_docs_copy_are_the_same_valid_spec() -> None:
    root = Path(__file__).parents[2]
    text = (root / "docs" / "training.md").read_text()
    section = text[text.index("## Ablations"):]
    example = section[section.index("```json") + len("```json"):]
    document = json.loads(example[: example.index("```")])
    assert json.loads((root / "examples" / "ablation_mqar.json").read_text()) == document
    spec = parse_spec(document)
    assert [run.name for run in spec.runs] == ["mag", "mag-no-forgetting", "mag-gd", "mag-chunk8", "swa"]
    assert spec.runs[1].model.decay_gate is None and spec.runs[2].model.optimizer == "gd"
    assert spec.runs[3].model.chunk_size == 8 and spec.runs[0].model.chunk_size == 1
    assert spec.task.queries_at_end and spec.lengths == (128, 512, 2048)


def test_a_diverging_run_is_recorded_and_the_ablation_goes_on(tmp_path: Path) -> None:
    # the paper's literal step at the largest constant rate the config allows (1.0) on a deep
    # memory at chunk 4 overshoots within 32 tokens: the first step is nan (its loss or its gradient)
    explodes = {"name": "explodes", "variant": "lmm", "memory_model": "mlp", "lr_gate": 1.0, "chunk_size": 4,
                "step_scale": "literal", "forget_target": "zero"}
    runs = [explodes, {"name": "swa", "variant": "swa"}]
    train = {"steps": 3, "batch_size": 2, "seq_len": 32, "warmup": 1, "log_every": 1, "eval_batches": 1}
    spec = parse_spec(spec_document(runs=runs, train=train))
    results = run_ablation(spec, tmp_path)
    bad, good = results
    # the loss itself, or (when the forward stays finite a step longer) the gradient
    assert any(f"{what} is {value}" in bad["diverged"] for what in ("loss", "gradient norm") for value in ("nan", "inf"))
    assert bad["loss"] is None and all(row["accuracy"] is None for row in bad["eval"])
    assert "diverged" not in good and good["loss"] is not None
    assert not any((tmp_path / "runs" / "explodes").glob("checkpoint-*"))  # no checkpoint of broken weights
    table = markdown_table(results)
    assert "| explodes | lmm |" in table and "diverged" in table
    assert plot_results(results, tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    assert run_ablation(spec, tmp_path)[0]["diverged"] == bad["diverged"]  # reused as it is


def test_titans_train_stops_with_one_line_when_the_loss_diverges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["train", "--variant", "lmm", "--task", "mqar", "--steps", "3", "--out", str(tmp_path / "x"),
                   "--memory", "mlp", "--lr-gate", "1", "--chunk-size", "4", "--step-scale", "literal",
                   "--forget-target", "zero", "--batch-size", "2", "--seq-len", "32", "-q"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1, err
    assert err.startswith(("titans: error: train: the loss is", "titans: error: train: the gradient norm is")), err


def test_a_needle_ablation_keeps_each_depth_in_its_result(tmp_path: Path) -> None:
    document = spec_document(task="needle", task_args={}, runs=[{"name": "swa", "variant": "swa"}],
                             eval={"lengths": [16], "batches": 1, "batch_size": 2})
    [result] = run_ablation(parse_spec(document), tmp_path)
    assert [(row["length"], row["depth"]) for row in result["eval"]] == [
        (16, 0.0), (16, 0.25), (16, 0.5), (16, 0.75), (16, 1.0)
    ]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in result["eval"])


def test_seeds_make_replicates_with_mean_and_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import statistics

    import titans.experiments.cli
    from titans.experiments.ablation import metrics_paths, replicate_dir

    runs = [{"name": "lin", "variant": "lmm", "chunk_size": 2}, {"name": "swa", "variant": "swa", "seeds": [1]}]
    spec = parse_spec(spec_document(runs=runs, seeds=[0, 1]))
    assert [(r.name, r.seeds, r.changes) for r in spec.runs] == [
        ("lin", (0, 1), (("variant", "lmm"), ("chunk_size", 2))), ("swa", (1,), (("variant", "swa"),))]
    results = run_ablation(spec, tmp_path)
    assert [(r["name"], r["seed"]) for r in results] == [("lin", 0), ("lin", 1), ("swa", 1)]
    for r, path in zip(results, metrics_paths(tmp_path, results)):
        assert path == replicate_dir(tmp_path, r["name"], r["seed"]) / "metrics.jsonl" and path.is_file()
    assert results[0]["loss"] != results[1]["loss"]  # another seed: another initialisation and data

    # a replicate is exactly the run trained with that seed as its training seed
    single = parse_spec(spec_document(runs=[runs[0]], train={**spec_document()["train"], "seed": 1}))
    [alone] = run_ablation(single, tmp_path / "alone")
    assert alone["loss"] == results[1]["loss"] and alone["eval"] == results[1]["eval"]

    table = markdown_table(results)
    head, _, lin, swa = table.splitlines()
    assert "| changes |" in head and "| seeds |" in head
    accuracies = [100 * accuracy_at(r, 16) for r in results[:2]]
    expected = f"{statistics.mean(accuracies):.1f}% ± {statistics.stdev(accuracies):.1f}%"
    assert lin.startswith('| lin | lmm | variant="lmm", chunk_size=2 |') and "| 0, 1 |" in lin and expected in lin
    losses = [float(next(row["loss"] for row in r["eval"] if row["length"] == 32)) for r in results[:2]]
    assert losses[0] != losses[1]
    assert lin.endswith(f"| {statistics.mean(losses):.3f} ± {statistics.stdev(losses):.3f} |")  # the last column
    assert swa.startswith('| swa | swa | variant="swa" |') and "| 1 |" in swa

    drawn: dict[str, Any] = {}
    monkeypatch.setattr(titans.experiments.cli, "plot_results", lambda results, path, **kw: drawn.update(kw) or path)
    document = tmp_path / "spec.json"
    document.write_text(json.dumps(spec_document(runs=runs, seeds=[0, 1])))
    assert main(["ablate", str(document), "--out", str(tmp_path), "-q"]) == 0  # reuses every replicate
    assert drawn["chance"] == spec.task.chance_accuracy() == 1 / 32
    assert plot_results(results, tmp_path / "p.png", metrics=metrics_paths(tmp_path, results),
                        chance=drawn["chance"]).read_bytes()[:8] == PNG_MAGIC
