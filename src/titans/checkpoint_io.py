"""The checkpoint files of a model directory: safetensors weights plus a JSON config, verified by
a manifest. Never unpickles. Below the model in the layers (it builds a model through the
``build`` it is given), so that :class:`~titans.model.TitansLM`'s own ``save_pretrained`` /
``from_pretrained`` rest on it; :mod:`titans.checkpoint` holds the public functions.

A checkpoint is a directory::

    config.json          {"format": "titans-config", "version": 2, "config": {...},
                          "dtype": "float32", "manifest": "manifest.json"}
    model.safetensors    the weights (a tied matrix stored once)
    manifest.json        each file's size and sha256 (:mod:`titans.manifest`), written last

Each file is written to a temporary name, fsynced and renamed into place, then the directory
is fsynced; files get mode ``0o644``. :func:`load_model_directory` checks the files against the
manifest before reading them, so a flipped bit, a truncated or a missing file is a
:class:`CheckpointError` naming the file. A checkpoint written before manifests existed (its
``config.json`` has no ``"manifest"`` entry) still loads, unverified; one whose config names a
manifest that is gone is refused. Non-finite weights are never written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from titans.config import TitansConfig
from titans.manifest import (
    MANIFEST_NAME,
    CheckpointError,
    make_directory,
    remove_stale_temporaries,
    verify_manifest,
    write_durably,
    write_manifest,
)

__all__ = [
    "CheckpointError", "load_checkpoint_config", "load_model_directory", "read_model_files", "save_model_directory",
    "write_model_files",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
#: safetensors' names of the dtypes a model holds
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
_SHOWN = 3  # how many offending tensors a message names


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def non_finite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """``"name (k of n values)"`` for each floating tensor of ``named`` holding NaN or inf."""
    found = []
    for name, tensor in named:
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                found.append(f"{name} ({bad} of {tensor.numel()} values)")
    return found


def refuse_non_finite(caller: str, what: str, found: list[str], note: str = "") -> None:
    """Raises ``FloatingPointError`` naming the first of ``found`` (non-finite tensors), if any."""
    if found:
        raise FloatingPointError(
            f"{caller}: refusing to write {what}: non-finite values in {_listing(found)}; "
            f"nothing was written{note}")


def write_model_files(model: nn.Module, directory: Path) -> None:
    """Writes ``config.json`` and ``model.safetensors`` durably into the existing ``directory``
    (no manifest, no finiteness check: :func:`save_model_directory` and the training checkpoint
    do both). ``model`` is a :class:`~titans.model.TitansLM` (its ``config`` and embedding)."""
    document = json.loads(model.config.to_json())
    document["dtype"] = str(model.embedding.weight.dtype).removeprefix("torch.")
    document["manifest"] = MANIFEST_NAME
    text = json.dumps(document, indent=2, sort_keys=True).encode()
    write_durably(directory / CONFIG_NAME, lambda tmp: tmp.write_bytes(text))
    write_durably(directory / WEIGHTS_NAME, lambda tmp: save_model(model, str(tmp), metadata={"format": "pt"}))


def save_model_directory(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Writes ``config.json``, ``model.safetensors`` and, last, ``manifest.json`` into
    ``directory`` (created, mode ``0o755``, if needed), each file durably (temporary name, fsync,
    rename, directory fsync) with mode ``0o644``. Stale temporaries of an earlier killed save are
    removed. Overwriting a checkpoint keeps its old manifest until the new one is in place, so a
    save killed half-way is detected on load as a mismatch rather than loaded as a mixture.

    Args:
        model: the model to save.
        directory: the checkpoint directory.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: ``model`` is not a module with a ``TitansConfig`` (a ``TitansLM``).
        TypeError: ``directory`` is not a str or path.
        FloatingPointError: a parameter or buffer holds NaN or inf (the message names the first
            such tensors); nothing is written. A ``FloatingPointError`` (not a ``ValueError``)
            because it means a diverged model, which the command line reports with exit status 1.
    """
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "config", None), TitansConfig):
        raise ValueError(f"save_pretrained: expected a TitansLM, got {type(model).__name__}")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"save_pretrained: directory must be a str or path, got {type(directory).__name__}")
    refuse_non_finite("save_pretrained", f"a checkpoint to {directory}",
                      non_finite_tensors([*model.named_parameters(), *model.named_buffers()]))
    path = Path(directory)
    make_directory(path)
    remove_stale_temporaries(path, (*MODEL_FILES, MANIFEST_NAME))
    write_model_files(model, path)
    write_manifest(path, MODEL_FILES)
    return path


def _read_json_object(path: Path, caller: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{caller}: {path} is not valid JSON ({err})") from err
    if not isinstance(document, dict):
        raise CheckpointError(f"{caller}: {path} is not a JSON object (it holds a {type(document).__name__})")
    return document


def _read_config(directory: Path, caller: str, verified: bool) -> tuple[TitansConfig, torch.dtype]:
    path = directory / CONFIG_NAME
    document = _read_json_object(path, caller)
    if not verified and "manifest" in document:
        raise CheckpointError(
            f"{caller}: {directory / MANIFEST_NAME} does not exist, but {path} was written with one "
            "(the checkpoint is incomplete)")
    document.pop("manifest", None)
    dtype_name = document.pop("dtype", "float32")
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise CheckpointError(
            f"{caller}: unknown dtype {dtype_name!r} in {path} (expected one of {sorted(_DTYPES)})")
    if document.get("format") != "titans-config" or not isinstance(document.get("config"), dict):
        raise CheckpointError(f"{caller}: {path} does not hold a valid model config (not a 'titans-config' "
                              "document with a 'config' object)")
    try:
        config = TitansConfig.from_json(json.dumps(document))
    except (ValueError, TypeError) as err:
        reason = " ".join(str(err).split())  # one line, whatever the config's message spans
        raise CheckpointError(f"{caller}: {path} does not hold a valid model config: {reason}") from err
    return config, _DTYPES[dtype_name]


def require_files(directory: Path, names: Iterable[str], caller: str) -> None:
    for name in names:
        if not (directory / name).is_file():
            raise CheckpointError(f"{caller}: {directory / name} does not exist")


def load_checkpoint_config(directory: str | os.PathLike[str]) -> TitansConfig:
    """The model config of a checkpoint, its ``config.json`` verified against the manifest
    (without reading the weights).

    Args:
        directory: a checkpoint directory (as :func:`save_model_directory` writes).

    Raises:
        CheckpointError: ``config.json`` is missing, does not match the manifest, is not a JSON
            object or does not hold a valid config (the message names the file).
    """
    path = Path(directory)
    require_files(path, (CONFIG_NAME,), "load_checkpoint_config")
    verified = verify_manifest(path, (CONFIG_NAME,), caller="load_checkpoint_config")
    return _read_config(path, "load_checkpoint_config", verified)[0]


def resolve_device(device: str | torch.device, caller: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{caller}: device must be 'cpu', 'cuda' or a torch.device, got {device!r}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{caller}: device {device!r} requested but CUDA is not available")
    return resolved


def _check_weights_fit(model: nn.Module, weights: Path, config: Path, caller: str) -> None:
    """One line naming the first tensors of ``weights`` that the model ``config`` builds differently
    (instead of torch's line per mismatching tensor)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            stored = {}
            for key in handle.keys():  # noqa: SIM118 -- a safetensors handle, not a dict
                tensor_slice = handle.get_slice(key)
                stored[key] = (list(tensor_slice.get_shape()), tensor_slice.get_dtype())
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{caller}: {weights} is not a readable safetensors file ({err})") from err
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    state = model.state_dict()
    for name, tensor in state.items():  # a tied matrix is stored under one of its names
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        groups.setdefault(key, []).append(name)
    problems = []
    for names in groups.values():
        present = [name for name in names if name in stored]
        if not present:
            problems.append(f"{names[0]} is missing")
        for name in present:
            tensor = state[name]
            expected = (list(tensor.shape), _SAFETENSORS_DTYPES.get(tensor.dtype, str(tensor.dtype)))
            if stored[name] != expected:
                problems.append(f"{name} is {stored[name][0]} {stored[name][1]} in the file, "
                                f"the config builds {expected[0]} {expected[1]}")
    problems += [f"{name} is not in the model" for name in sorted(set(stored) - set(state))]
    if problems:
        raise CheckpointError(f"{caller}: {weights} does not fit the model of {config}: {_listing(problems)}")


def load_model_directory(
    directory: str | os.PathLike[str], build: Callable[[TitansConfig], nn.Module], *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Builds the model from ``config.json`` (``build(config)``) and loads ``model.safetensors``
    into it (strict: every tensor must match), in the dtype it was saved in, on ``device``. Both
    files are first checked against ``manifest.json``; a checkpoint written before manifests
    existed (no ``"manifest"`` entry in its ``config.json``) is loaded unverified.

    Args:
        directory: a checkpoint directory (as :func:`save_model_directory` writes).
        build: the model class (``TitansLM``) or any callable from a config to the model.
        device: where the model goes (``"cpu"``, ``"cuda"``, a ``torch.device``).

    Raises:
        CheckpointError: a file is missing, does not match the manifest (a flipped bit, a
            truncation), is not valid JSON / safetensors, or the weights do not fit the config;
            the message names the file. A ``ValueError``.
        ValueError: ``device`` is not a device, or CUDA is not available.
    """
    caller = "load_pretrained"
    resolved = resolve_device(device, caller)
    path = Path(directory)
    require_files(path, MODEL_FILES, caller)
    return read_model_files(path, resolved, caller, build, verified=verify_manifest(path, MODEL_FILES, caller=caller))


def read_model_files(
    path: Path, device: torch.device, caller: str, build: Callable[[TitansConfig], nn.Module], *, verified: bool
) -> nn.Module:
    """The model (``build(config)``) of the checkpoint ``path`` whose files exist and were checked
    against the manifest (``verified``) or have none; see :func:`load_model_directory`."""
    config, dtype = _read_config(path, caller, verified)
    model = build(config).to(device=device, dtype=dtype)
    _check_weights_fit(model, path / WEIGHTS_NAME, path / CONFIG_NAME, caller)
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS_NAME), strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{caller}: {path / WEIGHTS_NAME} could not be loaded ({err})") from err
    if missing or unexpected:  # strict loading raises first; this guards a future relaxation
        raise CheckpointError(f"{caller}: {path / WEIGHTS_NAME}: missing {missing}, unexpected {unexpected}")
    return model
