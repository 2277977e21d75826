"""Training checkpoints: the model (safetensors + JSON), the optimizer and schedule, atomically
and durably, verified on load.

A run directory holds numbered checkpoints and a pointer to the newest one::

    out/
      metrics.jsonl
      LATEST                      "checkpoint-00000100" (replaced atomically)
      checkpoint-00000100/
        config.json               model config (titans.save_pretrained's layout)
        model.safetensors         weights
        optimizer.pt              AdamW state, plain tensors: loaded with weights_only=True
        trainer_state.json        step, train config, task, scheduler state
        manifest.json             size and sha256 of the four files above, written last

A checkpoint is written into a temporary directory (each file fsynced, mode ``0o644``; the
directory ``0o755``), renamed into place and the run directory fsynced; only then does
``LATEST`` move (a temporary file, fsynced, renamed, the directory fsynced again). An
interrupted write leaves the previous checkpoint and ``LATEST`` untouched; stale temporaries
(``.tmp-checkpoint-*`` directories, ``.LATEST.*.tmp`` files) are removed on the next write.
Non-finite weights or optimizer state are never written. :func:`load_training_state` checks
every file against the manifest first and turns a corrupted file into one
:class:`~titans.checkpoint.CheckpointError` naming it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from titans.checkpoint_io import (
    CONFIG_NAME,
    MODEL_FILES,
    CheckpointError,
    non_finite_tensors,
    read_model_files,
    refuse_non_finite,
    require_files,
    write_model_files,
)
from titans.manifest import (
    DIRECTORY_MODE,
    fsync_directory,
    make_directory,
    remove_stale_temporaries,
    verify_manifest,
    write_durably,
    write_manifest,
)
from titans.model import TitansLM

__all__ = [
    "checkpoint_note",
    "latest_checkpoint",
    "load_trainer_state",
    "load_training_state",
    "save_training_checkpoint",
]

LATEST = "LATEST"
OPTIMIZER_NAME = "optimizer.pt"
STATE_NAME = "trainer_state.json"
TRAINING_FILES = (*MODEL_FILES, OPTIMIZER_NAME, STATE_NAME)
_TMP_PREFIX = ".tmp-checkpoint-"
_CHECKPOINT_PREFIX = "checkpoint-"
#: what torch.load(weights_only=True) raises on a truncated, garbage or pickled-code file
_TORCH_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError, IndexError, TypeError,
                      AttributeError, OverflowError)


def _optimizer_tensors(model: TitansLM, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [
        (f"optimizer state {names.get(id(parameter), '?')}.{key}", value)
        for parameter, state in optimizer.state.items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    ]


def _step_of(state: dict[str, Any]) -> int | None:
    """``state["step"]`` if it is an integer >= 0, else ``None``."""
    step = state.get("step")
    return None if isinstance(step, bool) or not isinstance(step, int) or step < 0 else step


def save_training_checkpoint(
    out_dir: Path,
    model: TitansLM,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Writes ``checkpoint-{step:08d}`` under ``out_dir`` atomically and durably, points
    ``LATEST`` at it and keeps the newest ``keep`` checkpoints.

    Args:
        out_dir: the run directory (created, mode ``0o755``, if needed).
        model: the model; its parameters and buffers must be finite.
        optimizer: its ``state_dict()`` is saved; its state tensors must be finite.
        state: JSON-able (finite numbers only), holding an integer ``"step"`` >= 0.
        keep: how many checkpoints to keep (>= 1).

    Returns:
        The checkpoint directory.

    Raises:
        ValueError: ``state`` has no valid ``"step"`` or is not JSON-able with finite numbers,
            or ``keep`` < 1.
        FloatingPointError: a parameter, buffer or optimizer state tensor holds NaN or inf (the
            message names the first ones and the intact previous checkpoint); nothing is written.
    """
    caller = "save_training_checkpoint"
    step = _step_of(state) if isinstance(state, dict) else None
    if step is None:
        raise ValueError(f"{caller}: state must be a dict holding an integer 'step' >= 0, got {state!r:.200}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"{caller}: keep must be an integer >= 1, got {keep!r}")
    try:
        state_text = json.dumps(state, indent=2, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{caller}: state must be JSON-able with finite numbers ({err})") from err
    name = f"{_CHECKPOINT_PREFIX}{step:08d}"
    found = non_finite_tensors([*model.named_parameters(), *model.named_buffers(), *_optimizer_tensors(model, optimizer)])
    if found:
        refuse_non_finite(caller, f"{name} to {out_dir}", found, f" ({checkpoint_note(out_dir)})")

    out_dir = Path(out_dir)
    make_directory(out_dir)
    for stale in out_dir.glob(_TMP_PREFIX + "*"):
        if stale.is_dir():
            shutil.rmtree(stale)
    remove_stale_temporaries(out_dir, (LATEST,))
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=_TMP_PREFIX))
    os.chmod(tmp, DIRECTORY_MODE)
    write_model_files(model, tmp)
    write_durably(tmp / OPTIMIZER_NAME, lambda path: torch.save(optimizer.state_dict(), path))
    write_durably(tmp / STATE_NAME, lambda path: path.write_bytes(state_text))
    write_manifest(tmp, TRAINING_FILES)
    final = out_dir / name
    if final.exists():  # the same step written again (a resumed run that re-saves it)
        # moved aside, not deleted in place: a crash now leaves a stale temporary, never half a checkpoint
        aside = Path(tempfile.mkdtemp(dir=out_dir, prefix=_TMP_PREFIX))
        os.replace(final, aside / name)
        fsync_directory(out_dir)
        shutil.rmtree(aside)
    os.replace(tmp, final)
    fsync_directory(out_dir)
    write_durably(out_dir / LATEST, lambda path: path.write_text(name))
    for old in sorted(out_dir.glob(_CHECKPOINT_PREFIX + "*"))[:-keep]:
        if old.name != name and old.is_dir():
            shutil.rmtree(old)
    return final


def latest_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory ``path`` names: itself if it holds a model config, else the one
    its ``LATEST`` file points at.

    Raises:
        FileNotFoundError: there is no checkpoint (neither a config nor ``LATEST``), or ``LATEST``
            points at a directory that holds none.
        CheckpointError: ``LATEST`` does not hold a checkpoint directory's name.
    """
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    pointer = path / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"no checkpoint in {path} (neither {CONFIG_NAME} nor {LATEST})")
    raw = pointer.read_bytes()
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = ""
    if not name.startswith(_CHECKPOINT_PREFIX) or name != Path(name).name:
        raise CheckpointError(f"latest_checkpoint: {pointer} does not name a checkpoint directory (it holds {raw[:80]!r})")
    target = path / name
    if not (target / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{pointer} points at {target}, which holds no checkpoint")
    return target


def checkpoint_note(out_dir: str | os.PathLike[str], *, resume_hint: str = "") -> str:
    """What a stopped run leaves to resume from, for a message: ``"the last checkpoint,
    OUT/checkpoint-..., is intact"`` followed by ``resume_hint``, or, when there is none,
    ``"no checkpoint was written to OUT"`` (without the hint: there is nothing to resume)."""
    try:
        return f"the last checkpoint, {latest_checkpoint(out_dir)}, is intact{resume_hint}"
    except FileNotFoundError:
        return f"no checkpoint was written to {out_dir}"
    except CheckpointError as err:
        return f"no usable checkpoint in {out_dir} ({err})"


def _read_trainer_state(checkpoint: Path, caller: str) -> dict[str, Any]:
    path = checkpoint / STATE_NAME
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{caller}: {path} is not valid JSON ({err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{caller}: {path} is not a JSON object (it holds a {type(state).__name__})")
    if _step_of(state) is None:
        raise CheckpointError(f"{caller}: {path} has no integer 'step' >= 0 (got {state.get('step')!r})")
    return state


def load_trainer_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``trainer_state.json`` of a training checkpoint, verified against its manifest
    (without reading the weights or the optimizer).

    Raises:
        FileNotFoundError: the file is missing from a checkpoint without a manifest.
        CheckpointError: the file does not match the manifest, is not a JSON object or has no
            integer ``"step"`` >= 0 (the message names the file).
    """
    checkpoint = Path(checkpoint)
    if not verify_manifest(checkpoint, (STATE_NAME,), caller="load_trainer_state") and not (
            checkpoint / STATE_NAME).is_file():
        raise FileNotFoundError(f"{checkpoint / STATE_NAME} does not exist (not a training checkpoint)")
    return _read_trainer_state(checkpoint, "load_trainer_state")


def _check_optimizer_state(optimizer_state: Any, model: TitansLM, path: Path, caller: str) -> None:
    """The structure ``torch.optim.Optimizer.load_state_dict`` needs, with one state per
    parameter of ``model`` in order and moment tensors of that parameter's shape."""
    groups = optimizer_state.get("param_groups") if isinstance(optimizer_state, dict) else None
    per_param = optimizer_state.get("state") if isinstance(optimizer_state, dict) else None
    if not (isinstance(groups, list) and isinstance(per_param, dict) and all(
            isinstance(group, dict) and isinstance(group.get("params"), list) for group in groups)):
        raise CheckpointError(f"{caller}: {path} is not an optimizer state (no 'state' and 'param_groups')")
    indices = [index for group in groups for index in group["params"]]
    parameters = list(model.parameters())
    if len(indices) != len(parameters):
        raise CheckpointError(
            f"{caller}: {path} holds the state of {len(indices)} parameters, the model has {len(parameters)}")
    for index, parameter in zip(indices, parameters, strict=True):
        for key, value in (per_param.get(index) or {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                raise CheckpointError(
                    f"{caller}: {path}: {key} of parameter {index} has shape {list(value.shape)}, "
                    f"the model's is {list(parameter.shape)}")


def load_training_state(
    checkpoint: Path, device: torch.device
) -> tuple[TitansLM, dict[str, Any], dict[str, Any]]:
    """``(model, optimizer_state_dict, trainer_state)`` of a checkpoint directory, every file
    checked against the manifest first (a checkpoint written before manifests existed loads
    unverified). The optimizer state is read with ``torch.load(weights_only=True)``: tensors
    and plain containers only, never code.

    Raises:
        FileNotFoundError: ``optimizer.pt`` or ``trainer_state.json`` is missing from a
            checkpoint without a manifest (not a training checkpoint).
        CheckpointError: a file is missing, does not match the manifest, cannot be read, or
            does not fit the model (the message names the file).
    """
    caller = "load_training_state"
    checkpoint = Path(checkpoint)
    require_files(checkpoint, MODEL_FILES, caller)
    verified = verify_manifest(checkpoint, TRAINING_FILES, caller=caller)
    for name in (OPTIMIZER_NAME, STATE_NAME):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"{checkpoint / name} does not exist (not a training checkpoint)")
    model = read_model_files(checkpoint, torch.device(device), caller, TitansLM, verified=verified)
    path = checkpoint / OPTIMIZER_NAME
    try:
        optimizer_state = torch.load(path, map_location=device, weights_only=True)
    except _TORCH_LOAD_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{caller}: {path} could not be read as plain tensors ({reason})") from err
    _check_optimizer_state(optimizer_state, model, path, caller)
    return model, optimizer_state, _read_trainer_state(checkpoint, caller)
