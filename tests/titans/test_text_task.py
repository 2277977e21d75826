"""The text task: byte windows of the user's files, a held-out split, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from titans.experiments.tasks import MQAR, TextTask, bits_per_byte, evaluation_task, make_task, task_to_dict

TEXT = ("Titans learn to memorize at test time. Ünïcødé bytes count as bytes.\n" * 40).encode()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_bytes(TEXT)
    return path


def _contains(haystack: bytes, row: torch.Tensor) -> bool:
    return bytes(row.tolist()) in haystack


def test_splits_partition_the_corpus(corpus: Path) -> None:
    train = TextTask(str(corpus), heldout_fraction=0.25)
    held = train.for_evaluation()
    assert held.split == "heldout" and held.data == train.data
    joined = bytes(train.tokens().tolist()) + bytes(held.tokens().tolist())
    assert joined == TEXT
    assert len(held.tokens()) == int(len(TEXT) * 0.25)


@given(batch=st.integers(1, 4), seq_len=st.integers(1, 64), seed=st.integers(0, 2**31 - 1),
       split=st.sampled_from(["train", "heldout"]))
def test_batches_are_windows_of_their_split(corpus: Path, batch: int, seq_len: int, seed: int, split: str) -> None:
    task = TextTask(str(corpus), heldout_fraction=0.25, split=split)
    part = bytes(task.tokens().tolist())
    ids, labels = task.batch(torch.Generator().manual_seed(seed), batch, seq_len)
    assert ids.shape == labels.shape == (batch, seq_len) and ids.dtype == labels.dtype == torch.long
    assert torch.equal(ids[:, 1:], labels[:, :-1])  # labels are the next bytes
    for row_ids, row_labels in zip(ids, labels):
        assert _contains(part, torch.cat([row_ids, row_labels[-1:]]))  # the whole window lies in the split
    again = task.batch(torch.Generator().manual_seed(seed), batch, seq_len)
    assert torch.equal(again[0], ids) and torch.equal(again[1], labels)


def test_folder_reads_matching_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second file")
    (tmp_path / "one.txt").write_text("first file")
    (tmp_path / "skip.bin").write_bytes(b"\xff\xfe\x00")  # not UTF-8, but not matched
    task = TextTask(str(tmp_path), pattern="*.txt", heldout_fraction=0.5)
    whole = bytes(task.tokens().tolist()) + bytes(task.for_evaluation().tokens().tolist())
    assert whole == b"second file\nfirst file"  # sorted paths: b/two.txt before one.txt


def test_errors_name_the_problem(tmp_path: Path, corpus: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 \(byte 3\)"):
        TextTask(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        TextTask(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no file matching"):
        TextTask(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--data PATH"):
        make_task("text")
    with pytest.raises(ValueError, match="heldout_fraction"):
        TextTask(str(corpus), heldout_fraction=0.9)
    with pytest.raises(ValueError, match=r"at least 256 \(--vocab-size 256\), got 64"):
        TextTask(str(corpus), vocab_size=64)
    with pytest.raises(ValueError, match="split"):
        TextTask(str(corpus), split="test")
    with pytest.raises(ValueError, match="too few"):
        TextTask(str(corpus)).for_evaluation().batch(torch.Generator(), 1, len(TEXT))


def test_round_trip_and_evaluation_task(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(corpus.parent)
    task = make_task("text", data="corpus.txt", pattern="*.txt")
    assert Path(task.data).is_absolute()  # a resumed run finds it from anywhere
    spec = task_to_dict(task)
    assert make_task(spec["name"], **spec["options"]) == task
    assert evaluation_task(task).split == "heldout"
    mqar = MQAR()
    assert evaluation_task(mqar) is mqar


def test_bits_per_byte() -> None:
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0)  # a uniform guess over bytes


def test_evaluation_draws_from_the_held_out_part(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from titans import TitansLM
    from titans.experiments.evaluate import evaluate

    from .helpers import tiny

    splits: list[str] = []
    batch = TextTask.batch

    def recording(self: TextTask, generator: torch.Generator, batch_size: int, seq_len: int):
        splits.append(self.split)
        return batch(self, generator, batch_size, seq_len)

    monkeypatch.setattr(TextTask, "batch", recording)
    torch.manual_seed(0)
    model = TitansLM(tiny("swa", vocab_size=256))
    rows = evaluate(model, TextTask(str(corpus)), [8, 16], batches=2, batch_size=2)
    assert splits == ["heldout"] * 4
    for row in rows:
        assert row["finite"] and row["bits_per_byte"] == pytest.approx(row["loss"] / math.log(2))


def test_train_and_eval_on_text_from_the_command_line(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from titans.checkpoint import load_pretrained
    from titans.experiments.cli import main
    from titans.experiments.run_checkpoint import latest_checkpoint

    out = tmp_path / "run"
    assert main(["train", "--variant", "swa", "--task", "text", "--data", str(corpus), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--out", str(out), "-q"]) == 0
    assert load_pretrained(latest_checkpoint(out)).config.vocab_size == 256  # bytes, though the preset has fewer
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--task", "text", "--data", str(corpus), "--lengths", "16,64",
                 "--batches", "1", "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("text  length") and "bits/byte" in line for line in lines)
    # the same file under another spelling is no conflict; another file is
    assert main(["train", "--resume", "--out", str(out), "--data", str(corpus.parent / "." / corpus.name),
                 "--steps", "3", "-q"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--data", str(tmp_path), "--steps", "4", "-q"]) == 2
    assert "--resume: these flags differ" in capsys.readouterr().err
