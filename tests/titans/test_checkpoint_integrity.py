"""Checkpoints are whole and verified: a changed byte in any file is one error naming the file;
files are durable (fsynced, renamed, directory fsynced) with consistent modes; non-finite
weights are never written; checkpoints from before manifests existed still load."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_model

from titans import TitansConfig, TitansLM, load_pretrained, save_pretrained
from titans.checkpoint import CheckpointError, load_checkpoint_config
from titans.experiments.cli import main
from titans.manifest import write_manifest
from titans.experiments.run_checkpoint import (
    TRAINING_FILES,
    checkpoint_note,
    latest_checkpoint,
    load_trainer_state,
    load_training_state,
    save_training_checkpoint,
)

CPU = torch.device("cpu")
MODEL_FILES = ("config.json", "model.safetensors")
ALL_FILES = (*TRAINING_FILES, "manifest.json")


def tiny_model(seed: int = 0, variant: str = "mag", **overrides: object) -> TitansLM:
    torch.manual_seed(seed)
    return TitansLM(TitansConfig.preset("tiny", variant=variant, **overrides))


def trained(model: TitansLM) -> torch.optim.Optimizer:
    """An AdamW with state (one step on a made-up loss)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    model(ids).logits.square().mean().backward()
    optimizer.step()
    return optimizer


def training_checkpoint(out: Path, step: int = 1) -> Path:
    model = tiny_model()
    return save_training_checkpoint(out, model, trained(model), {"step": step, "note": "test"})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of each file of one training checkpoint, written once for the module."""
    checkpoint = training_checkpoint(tmp_path_factory.mktemp("pristine") / "run")
    return {name: (checkpoint / name).read_bytes() for name in ALL_FILES}


def materialize(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def tensor_data_offset(weights: bytes) -> int:
    """Where a safetensors file's tensor bytes start (after the 8-byte length and the header)."""
    return 8 + int.from_bytes(weights[:8], "little")


def one_line_error(excinfo: pytest.ExceptionInfo[BaseException], name: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert f"/{name}" in message, message
    return message


def flipped(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1:]


# ---------------------------------------------------------------- corruption of a verified checkpoint


@pytest.mark.parametrize("name", ALL_FILES)
def test_a_flipped_byte_anywhere_in_a_file_is_an_error_naming_it(tmp_path, pristine, name):
    data = pristine[name]
    positions = {0, 1, len(data) // 3, len(data) // 2, len(data) - 1}
    if name == "model.safetensors":  # inside the tensor data, which safetensors itself never checks
        start = tensor_data_offset(data)
        positions |= {start, start + 5, (start + len(data)) // 2}
    checkpoint = materialize(tmp_path / "ckpt", pristine)
    for position in sorted(positions):
        (checkpoint / name).write_bytes(flipped(data, position))
        with pytest.raises(CheckpointError) as excinfo:
            load_training_state(checkpoint, CPU)
        message = one_line_error(excinfo, name)
        assert message.startswith("load_training_state: ")
        assert ("does not match its manifest" in message) != (name == "manifest.json"), message
    (checkpoint / name).write_bytes(data)
    load_training_state(checkpoint, CPU)  # restored: loads again


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("damage", ["truncate", "empty", "delete", "append"])
def test_a_truncated_emptied_deleted_or_extended_file_is_an_error_naming_it(tmp_path, pristine, name, damage):
    checkpoint = materialize(tmp_path / "ckpt", pristine)
    path, data = checkpoint / name, pristine[name]
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "append": data + b"\0"}[damage])
    with pytest.raises(CheckpointError) as excinfo:
        load_training_state(checkpoint, CPU)
    message = one_line_error(excinfo, name)
    if damage in ("truncate", "empty", "append") and name != "manifest.json":
        assert "size" in message and "does not match its manifest" in message


@pytest.mark.parametrize("name", [*MODEL_FILES, "manifest.json"])
def test_load_pretrained_verifies_the_files_it_reads(tmp_path, pristine, name):
    checkpoint = materialize(tmp_path / "ckpt", pristine)
    load_pretrained(checkpoint)
    (checkpoint / name).write_bytes(flipped(pristine[name], len(pristine[name]) - 2))
    with pytest.raises(CheckpointError) as excinfo:
        load_pretrained(checkpoint)
    assert one_line_error(excinfo, name).startswith("load_pretrained: ")


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(ALL_FILES), fraction=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_any_changed_byte_of_any_file_is_caught(tmp_path_factory, pristine, name, fraction, mask):
    checkpoint = materialize(tmp_path_factory.mktemp("fuzz"), pristine)
    data = bytearray(pristine[name])
    data[int(fraction * len(data))] ^= mask
    (checkpoint / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as excinfo:
        load_training_state(checkpoint, CPU)
    one_line_error(excinfo, name)


def test_the_partial_loaders_verify_their_file(tmp_path, pristine):
    checkpoint = materialize(tmp_path / "ckpt", pristine)
    assert load_checkpoint_config(checkpoint) == TitansConfig.preset("tiny", variant="mag")
    assert load_trainer_state(checkpoint) == {"step": 1, "note": "test"}
    (checkpoint / "config.json").write_bytes(pristine["config.json"].replace(b'"dim": 32', b'"dim": 48'))
    (checkpoint / "trainer_state.json").write_bytes(pristine["trainer_state.json"].replace(b"1", b"2"))
    with pytest.raises(CheckpointError, match="config.json does not match its manifest"):
        load_checkpoint_config(checkpoint)
    with pytest.raises(CheckpointError, match="trainer_state.json does not match its manifest"):
        load_trainer_state(checkpoint)


def test_a_model_checkpoint_is_not_a_training_checkpoint(tmp_path):
    checkpoint = save_pretrained(tiny_model(), tmp_path / "model")
    with pytest.raises(CheckpointError, match="optimizer.pt does not exist and is not listed"):
        load_training_state(checkpoint, CPU)


def test_eval_of_a_corrupted_checkpoint_is_one_error_line(tmp_path, pristine, capsys):
    checkpoint = materialize(tmp_path / "ckpt", pristine)
    weights = pristine["model.safetensors"]
    (checkpoint / "model.safetensors").write_bytes(flipped(weights, tensor_data_offset(weights) + 40))
    assert main(["eval", "--checkpoint", str(checkpoint), "--task", "mqar", "--lengths", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("titans: error: load_pretrained: ") and err.count("\n") == 1
    assert "model.safetensors does not match its manifest (sha256" in err


# ---------------------------------------------------------------- checkpoints without a manifest


def legacy(directory: Path) -> Path:
    """``directory`` as written before manifests existed: no manifest, no "manifest" entry."""
    (directory / "manifest.json").unlink()
    document = json.loads((directory / "config.json").read_text())
    del document["manifest"]
    (directory / "config.json").write_text(json.dumps(document, indent=2, sort_keys=True))
    return directory


def test_a_checkpoint_without_a_manifest_still_loads(tmp_path, pristine):
    model = tiny_model()
    checkpoint = legacy(save_pretrained(model, tmp_path / "old"))
    loaded = load_pretrained(checkpoint)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    training = legacy(materialize(tmp_path / "old-run", pristine))
    _, optimizer_state, state = load_training_state(training, CPU)
    assert state["step"] == 1 and optimizer_state["state"]


def test_a_deleted_manifest_is_not_mistaken_for_an_old_checkpoint(tmp_path, pristine):
    checkpoint = materialize(tmp_path / "ckpt", pristine)
    (checkpoint / "manifest.json").unlink()
    for load in (load_pretrained, lambda path: load_training_state(path, CPU)):
        with pytest.raises(CheckpointError, match="manifest.json does not exist, but .*config.json was written"):
            load(checkpoint)


@pytest.mark.parametrize(("text", "expected"), [
    ("{not json", "config.json is not valid JSON"),
    ("5", "config.json is not a JSON object"),
    ("[1, 2]", "config.json is not a JSON object"),
    ('{"format": "titans-config", "config": null}', "config.json does not hold a valid model config"),
    ('{"format": "other"}', "config.json does not hold a valid model config"),
    ("\udcff", "config.json is not valid JSON"),
])
def test_an_unreadable_config_is_one_error_naming_it(tmp_path, text, expected):
    checkpoint = legacy(save_pretrained(tiny_model(), tmp_path / "old"))
    (checkpoint / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=expected) as excinfo:
        load_pretrained(checkpoint)
    one_line_error(excinfo, "config.json")


def test_a_config_whose_dim_changed_is_one_line_naming_the_first_tensors(tmp_path):
    checkpoint = legacy(save_pretrained(tiny_model(), tmp_path / "old"))
    document = json.loads((checkpoint / "config.json").read_text())
    document["config"]["dim"] = 48
    (checkpoint / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError) as excinfo:
        load_pretrained(checkpoint)
    message = one_line_error(excinfo, "model.safetensors")
    assert "does not fit the model of" in message and "the config builds" in message and "more" in message


def test_weights_of_another_dtype_or_variant_are_refused(tmp_path):
    checkpoint = legacy(save_pretrained(tiny_model(), tmp_path / "old"))
    save_model(tiny_model().double(), str(checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"is \[.*\] F64 in the file, the config builds \[.*\] F32"):
        load_pretrained(checkpoint)
    save_model(tiny_model(variant="mal"), str(checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_pretrained(checkpoint)


@pytest.mark.parametrize("damage", ["truncate", "empty", "header", "short-length"])
def test_an_unreadable_safetensors_file_is_one_error_naming_it(tmp_path, damage):
    checkpoint = legacy(save_pretrained(tiny_model(), tmp_path / "old"))
    data = (checkpoint / "model.safetensors").read_bytes()
    damaged = {"truncate": data[: len(data) - 100], "empty": b"", "header": data[:8] + b"x" + data[9:],
               "short-length": (5).to_bytes(8, "little") + data[8:]}[damage]
    (checkpoint / "model.safetensors").write_bytes(damaged)
    with pytest.raises(CheckpointError) as excinfo:
        load_pretrained(checkpoint)
    one_line_error(excinfo, "model.safetensors")


class _Payload:
    """Unpickling this would create a file: proof that no code from a checkpoint runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (os.mkdir, (str(self.path),))


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "code", "list", "other-model"])
def test_an_unreadable_optimizer_state_is_one_error_naming_it(tmp_path, pristine, damage):
    checkpoint = legacy(materialize(tmp_path / "ckpt", pristine))
    data = pristine["optimizer.pt"]
    marker = tmp_path / "pwned"
    if damage == "other-model":
        other = tiny_model(dim=48)
        torch.save(trained(other).state_dict(), checkpoint / "optimizer.pt")
    elif damage == "list":
        torch.save([torch.zeros(2)], checkpoint / "optimizer.pt")
    else:
        (checkpoint / "optimizer.pt").write_bytes({
            "truncate": data[: len(data) // 2], "empty": b"", "garbage": b"hello world" * 10,
            "code": pickle.dumps({"state": _Payload(marker)}, protocol=2)}[damage])
    with pytest.raises(CheckpointError) as excinfo:
        load_training_state(checkpoint, CPU)
    one_line_error(excinfo, "optimizer.pt")
    assert not marker.exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("[]", "not a JSON object"), ("5", "not a JSON object"), ("{", "not valid JSON"),
    ('{"step": -1}', "no integer 'step'"), ('{"step": true}', "no integer 'step'"), ("{}", "no integer 'step'"),
])
def test_an_unreadable_trainer_state_is_one_error_naming_it(tmp_path, pristine, text, expected):
    checkpoint = legacy(materialize(tmp_path / "ckpt", pristine))
    (checkpoint / "trainer_state.json").write_text(text)
    with pytest.raises(CheckpointError, match=expected) as excinfo:
        load_training_state(checkpoint, CPU)
    one_line_error(excinfo, "trainer_state.json")


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(TRAINING_FILES), fraction=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_a_changed_byte_in_an_unverified_checkpoint_loads_or_is_one_named_error(
    tmp_path_factory, pristine, name, fraction, mask
):
    """Without a manifest nothing can catch every change (a flip inside tensor data loads), but
    no change may escape as anything other than a ``CheckpointError`` naming the file."""
    checkpoint = legacy(materialize(tmp_path_factory.mktemp("legacy-fuzz"), pristine))
    data = bytearray((checkpoint / name).read_bytes())
    data[int(fraction * len(data))] ^= mask
    (checkpoint / name).write_bytes(bytes(data))
    try:
        load_training_state(checkpoint, CPU)
    except CheckpointError as err:
        assert "\n" not in str(err) and f"/{name}" in str(err), str(err)


# ---------------------------------------------------------------- writing


def test_non_finite_weights_are_never_written(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    first = next(name for name, _ in model.named_parameters())
    with pytest.raises(FloatingPointError, match=rf"save_pretrained: refusing .*non-finite values in {first} \(1 of"):
        save_pretrained(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_a_non_finite_training_state_is_never_written(tmp_path):
    out = tmp_path / "run"
    before = training_checkpoint(out, step=1)
    listing = sorted(p.name for p in out.iterdir())
    model = tiny_model()
    optimizer = trained(model)
    moment = next(iter(optimizer.state.values()))["exp_avg"]
    moment.view(-1)[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"optimizer state .*exp_avg \(1 of .* is intact") as excinfo:
        save_training_checkpoint(out, model, optimizer, {"step": 2})
    assert str(before) in str(excinfo.value)
    moment.view(-1)[0] = 0.0
    with torch.no_grad():
        model.head.weight.fill_(float("-inf"))
    with pytest.raises(FloatingPointError, match="head.weight"):
        save_training_checkpoint(out, model, optimizer, {"step": 2})
    assert sorted(p.name for p in out.iterdir()) == listing and latest_checkpoint(out) == before


@pytest.mark.parametrize(("state", "keep"), [({"step": -1}, 2), ({"step": "3"}, 2), ({}, 2), ({"step": 1}, 0),
                                             ({"step": 1, "loss": float("nan")}, 2), ({"step": 1, "x": object()}, 2)])
def test_a_bad_training_state_is_refused_before_writing(tmp_path, state, keep):
    model = tiny_model()
    with pytest.raises(ValueError, match="save_training_checkpoint: (state|keep)"):
        save_training_checkpoint(tmp_path / "run", model, trained(model), state, keep=keep)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def strict_umask():
    previous = os.umask(0o077)  # what makes mkstemp's 0o600 and mkdir's 0o700 visible
    yield
    os.umask(previous)


def test_files_are_0644_and_directories_0755_whatever_the_umask(tmp_path, strict_umask):
    save_pretrained(tiny_model(), tmp_path / "model" / "nested")
    training_checkpoint(tmp_path / "run")
    written = [*(tmp_path / "model").rglob("*"), tmp_path / "model", *(tmp_path / "run").rglob("*"), tmp_path / "run"]
    assert len(written) == 2 + len(MODEL_FILES) + 1 + 3 + len(ALL_FILES)  # directories, files, manifests
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    out = tmp_path / "run"
    training_checkpoint(out, step=1)
    (out / ".LATEST.abc123.tmp").write_text("checkpoint-0000")
    (out / ".tmp-checkpoint-xyz").mkdir()
    (out / ".tmp-checkpoint-xyz" / "model.safetensors").write_bytes(b"half")
    training_checkpoint(out, step=2)
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", "checkpoint-00000001", "checkpoint-00000002"]
    model_dir = save_pretrained(tiny_model(), tmp_path / "model")
    (model_dir / ".model.safetensors.q1w2e3.tmp").write_bytes(b"half")
    (model_dir / "notes.txt").write_text("the user's own file stays")
    save_pretrained(tiny_model(), model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == [*sorted(MODEL_FILES + ("manifest.json",)), "notes.txt"]


def test_a_save_killed_mid_write_leaves_the_last_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "run"
    before = training_checkpoint(out, step=1)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("titans.experiments.run_checkpoint.write_manifest", killed)  # everything but the manifest written
    with pytest.raises(KeyboardInterrupt):
        training_checkpoint(out, step=2)
    monkeypatch.undo()
    assert latest_checkpoint(out) == before and not (out / "checkpoint-00000002").exists()
    load_training_state(before, CPU)
    assert checkpoint_note(out) == f"the last checkpoint, {before}, is intact"

    model_dir = save_pretrained(tiny_model(seed=0), tmp_path / "model")
    monkeypatch.setattr("titans.checkpoint_io.write_manifest", killed)  # overwritten, the old manifest kept
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(tiny_model(seed=1), model_dir)
    monkeypatch.undo()
    assert not [p.name for p in model_dir.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(CheckpointError, match="does not match its manifest"):  # a mixture is detected
        load_pretrained(model_dir)


def test_saving_the_same_step_again_replaces_it_whole(tmp_path):
    out = tmp_path / "run"
    training_checkpoint(out, step=3)
    model = tiny_model(seed=5)
    save_training_checkpoint(out, model, trained(model), {"step": 3})
    loaded, _, _ = load_training_state(latest_checkpoint(out), CPU)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", "checkpoint-00000003"]


def test_every_file_and_the_directories_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    out = tmp_path / "run"
    checkpoint = training_checkpoint(out, step=7)
    names = [Path(path).name for path in synced]
    for name in ALL_FILES:  # each written to a temporary name in the temporary checkpoint directory
        assert any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in names), name
    assert names.index(next(n for n in names if n.startswith(".manifest.json."))) > max(
        i for i, n in enumerate(names) if n.startswith((".optimizer.pt.", ".model.safetensors.")))
    latest = names.index(next(n for n in names if n.startswith(".LATEST.")))
    assert str(out) in synced[:latest] and synced[latest + 1:] == [str(out)]  # after the rename, after LATEST
    assert checkpoint.name == "checkpoint-00000007"

    synced.clear()
    save_pretrained(tiny_model(), tmp_path / "model")
    names = [Path(path).name for path in synced]
    assert [n.split(".tmp")[0].rsplit(".", 1)[0] for n in names if n.endswith(".tmp")] == [
        ".config.json", ".model.safetensors", ".manifest.json"]
    assert names.count("model") == 3  # the directory, after each rename


def test_a_garbled_latest_is_one_error(tmp_path):
    out = tmp_path / "run"
    training_checkpoint(out)
    for text in (b"../../etc", b"\xff\xfe", b"", b"checkpoint-00000001/../x"):
        (out / "LATEST").write_bytes(text)
        with pytest.raises(CheckpointError, match="LATEST does not name a checkpoint directory"):
            latest_checkpoint(out)
        assert checkpoint_note(out).startswith(f"no usable checkpoint in {out}")
