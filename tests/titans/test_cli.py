"""The ``titans`` command line: train, resume and eval end to end; one-line errors, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from titans.experiments.cli import main

TINY = ["--batch-size", "2", "--seq-len", "16", "--warmup", "1", "--log-every", "1", "--eval-batches", "1"]


def strict_json(text: str) -> object:
    """``json.loads`` that refuses the non-standard constants NaN, Infinity and -Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "titans", *args], capture_output=True, text=True, timeout=120, check=False)


def test_train_resume_and_eval_through_python_m(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = run("train", "--variant", "lmm", "--task", "mqar", "--task-arg", "num_pairs=2", "--steps", "2",
               "--out", str(out), "--memory", "linear", "--optimizer", "gd", "--momentum-gate", "none", *TINY)
    assert done.returncode == 0, done.stderr
    summary = strict_json(done.stdout)
    assert summary["step"] == 2 and Path(summary["checkpoint"]).is_dir()
    assert "step 2/2" in done.stderr and "tok/s" in done.stderr and "ETA" in done.stderr
    config = json.loads((out / "checkpoint-00000002" / "config.json").read_text())["config"]
    assert (config["variant"], config["memory_model"], config["optimizer"]) == ("lmm", "linear", "gd")

    resumed = run("train", "--out", str(out), "--resume", "--steps", "3", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert strict_json(resumed.stdout)["step"] == 3 and resumed.stderr == ""
    assert all(strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines())

    evaluated = run("eval", "--checkpoint", str(out), "--task", "mqar", "--task-arg", "num_pairs=2",
                    "--lengths", "8,16", "--batches", "1", "--batch-size", "2", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    rows = [json.loads(line) for line in evaluated.stdout.splitlines()]
    assert [r["length"] for r in rows] == [8, 16] and all(0 <= r["accuracy"] <= 1 for r in rows)


def test_bad_input_is_one_line_and_exit_2_in_a_subprocess(tmp_path: Path) -> None:
    done = run("train", "--variant", "mac", "--task", "nope", "--steps", "1", "--out", str(tmp_path / "x"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("titans: error:") and "nope" in done.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--variant", "nope", "--task", "mqar", "--out", "{tmp}/a"], "variant"),
        (["train", "--variant", "mac", "--task", "needle", "--memory", "bogus", "--out", "{tmp}/a"], "memory_model"),
        (["train", "--variant", "mac", "--task", "mqar", "--steps", "0", "--out", "{tmp}/a"], "steps"),
        (["train", "--variant", "mac", "--task", "mqar", "--memory-depth", "x", "--out", "{tmp}/a"], "memory-depth"),
        (["train", "--variant", "mac", "--task", "mqar", "--task-arg", "bad=1", "--out", "{tmp}/a"], "bad"),
        (["train", "--variant", "mac", "--task", "mqar", "--config", "{tmp}/none.json", "--out", "{tmp}/a"],
         "does not exist"),
        (["train", "--variant", "mac", "--task", "mqar", "--device", "tpu", "--out", "{tmp}/a"], "device"),
        (["train", "--variant", "mag", "--task", "mqar", "--dist-timeout", "0", "--out", "{tmp}/a"],
         "--dist-timeout"),
        (["train", "--variant", "mag", "--task", "mqar", "--preset", "tiny", "--config", "{tmp}/c.json",
          "--out", "{tmp}/a"], "not both"),
        (["train", "--task", "mqar", "--out", "{tmp}/a"], "--variant"),
        (["train", "--out", "{tmp}/a", "--resume"], "no checkpoint"),
        (["eval", "--checkpoint", "{tmp}/missing", "--task", "mqar"], "no checkpoint"),
        (["eval", "--checkpoint", "{tmp}", "--task", "mqar", "--lengths", "a,b"], "lengths"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("titans: error:") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "a").exists()


def test_config_file_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from titans import TitansConfig

    (tmp_path / "c.json").write_text(json.dumps({"vocab_size": 32, "dim": 16, "heads": 2, "depth": 1,
                                                 "window": 4, "segment_len": 4, "chunk_size": 2}))
    status = main(["train", "-q", "--variant", "swa", "--task", "selective_copy", "--task-arg", "num_tokens=3",
                   "--config", str(tmp_path / "c.json"), "--window", "8", "--steps", "1", "--out",
                   str(tmp_path / "r"), *TINY])
    assert status == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "r" / "checkpoint-00000001" / "config.json").read_text())
    document.pop("dtype")
    config = TitansConfig.from_json(json.dumps(document))
    assert (config.variant, config.vocab_size, config.dim, config.window) == ("swa", 32, 16, 8)


def test_component_overrides_map_onto_config_fields() -> None:
    from titans.experiments.cli import _model_config, build_parser

    def config(*flags: str):
        return _model_config(build_parser().parse_args(["train", "--variant", "mag", "--task", "mqar",
                                                        "--out", "x", *flags]))

    assert config().memory_layers is None and config().decay_gate == "learned"
    c = config("--memory", "gated_mlp", "--memory-depth", "3", "--optimizer", "gd", "--momentum-gate", "none",
               "--decay-gate", "none", "--lr-gate", "0.5", "--memory-layers", "1", "--chunk-size", "2")
    assert (c.memory_model, c.memory_depth, c.optimizer, c.momentum_gate, c.decay_gate, c.lr_gate,
            c.memory_layers, c.chunk_size) == ("gated_mlp", 3, "gd", None, None, 0.5, (1,), 2)
    assert config("--memory-layers", "all").memory_layers is None
    c = config("--lr-gate-init", "0.001", "--lr-gate-max", "0.02")
    assert (c.lr_gate_init, c.lr_gate_max) == (0.001, 0.02)
    c = config("--decay-gate-init", "0.0001", "--decay-gate-max", "0.001")
    assert (c.decay_gate_init, c.decay_gate_max) == (0.0001, 0.001)


def train_tiny(out: Path, *flags: str) -> int:
    return main(["train", "-q", "--variant", "lmm", "--task", "mqar", "--task-arg", "num_pairs=2", "--memory",
                 "linear", "--out", str(out), *TINY, *flags])


def test_resume_refuses_flags_that_differ_from_the_run_and_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "1") == 0
    capsys.readouterr()
    status = main(["train", "--out", str(out), "--resume", "--variant", "mac", "--lr", "0.5", "--dim", "64",
                   "--task-arg", "num_pairs=3", "--seed", "0", "--memory", "linear", "--steps", "2"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"titans: error: --resume: these flags differ from the run in {out}: "
                          "--variant mac (run: lmm), --task-arg num_pairs=3 (run: 2), --dim 64 (run: 32), "
                          "--lr 0.5 (run: 0.001) (only --steps"), err
    status = main(["train", "--out", str(out), "--resume", "--preset", "170m", "--steps", "2"])
    err = capsys.readouterr().err
    assert status == 2 and "--preset 170m (differs in " in err and "(run: 32)" in err and "variant" not in err, err
    assert list(out.glob("checkpoint-*")) == [out / "checkpoint-00000001"]  # nothing ran

    # equal values and the flags that may change (length, device, cadence) are accepted
    assert main(["train", "-q", "--out", str(out), "--resume", "--variant", "lmm", "--lr", "0.001", "--memory",
                 "linear", "--steps", "2", "--checkpoint-every", "1", "--device", "cpu"]) == 0
    summary = strict_json(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["checkpoint"].endswith("checkpoint-00000002")


def test_resume_drops_a_torn_metrics_line_with_a_warning_and_names_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "2", "--checkpoint-every", "1") == 0
    metrics = out / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"accuracy": 0.0, "kind": "tr')  # the writer died mid-line
    capsys.readouterr()
    assert main(["train", "-q", "--out", str(out), "--resume", "--steps", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"titans: warning: {metrics}: dropped the torn last line 4 (a run stopped while "
                            """writing it): '{"accuracy": 0.0, "kind": "tr'\n""")
    records = [strict_json(line) for line in metrics.read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("eval", 2), ("train", 3),
                                                         ("eval", 3)]

    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")  # damage that is no crash
    assert main(["train", "-q", "--out", str(out), "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"titans: error: {metrics}: line 2 is not valid JSON") and err.count("\n") == 1, err
