"""Whole, verified checkpoint files: durable writes and a manifest of each file's sha256.

Every file of a checkpoint is written to a temporary name in its directory, flushed, fsynced,
given mode ``0o644`` and renamed into place; the directory is fsynced after the rename, so a
crash leaves either the old file or the new one, never a torn one. The manifest, written last,
records each file's size and sha256::

    manifest.json   {"format": "titans-manifest", "version": 1,
                     "files": {"config.json": {"sha256": "...", "size": 1234}, ...},
                     "self_sha256": "..."}

``self_sha256`` is the sha256 of the manifest's canonical text without that field, and the file
must be exactly that canonical text, so a changed byte in the manifest itself is caught too.
:func:`verify_manifest` checks the files a loader is about to read and raises
:class:`CheckpointError` naming the first that differs (missing, truncated, a flipped bit).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "FILE_MODE",
    "DIRECTORY_MODE",
    "MANIFEST_NAME",
    "CheckpointError",
    "fsync_directory",
    "make_directory",
    "remove_stale_temporaries",
    "verify_manifest",
    "write_durably",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FILE_MODE = 0o644
DIRECTORY_MODE = 0o755
_FORMAT = "titans-manifest"
_VERSION = 1
_TMP_SUFFIX = ".tmp"
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, or does not fit the rest of the checkpoint.

    The message starts with the function that found it and names the file. A ``ValueError``, so
    the ``titans`` command line reports it as one ``titans: error:`` line with exit status 2.
    """


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Makes the entries of ``directory`` (a rename into it, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(path: str | os.PathLike[str]) -> None:
    """Creates ``path`` and any missing parents with mode ``0o755`` (whatever the umask), each
    made durable in its parent; an existing directory is left as it is."""
    path = Path(path)
    if path.is_dir():
        return
    make_directory(path.parent)
    path.mkdir()
    os.chmod(path, DIRECTORY_MODE)
    fsync_directory(path.parent)


def _temporary_name(path: Path) -> str:
    return f".{path.name}."


def write_durably(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Writes ``path`` whole or not at all: ``write(tmp)`` writes a temporary file in the same
    directory, which is fsynced, given mode ``0o644`` and renamed to ``path``; then the directory
    is fsynced. On an error (or Ctrl-C) the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temporary_name(path), suffix=_TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    renamed = False
    try:
        write(tmp)
        with tmp.open("rb+") as handle:  # the writer closed it (flushed); make the bytes durable
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        renamed = True
    finally:  # an error or an interruption (Ctrl-C) mid-write leaves no temporary behind
        if not renamed:
            tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def remove_stale_temporaries(directory: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Removes the temporaries :func:`write_durably` leaves for ``names`` in ``directory`` when a
    process is killed mid-write (``.NAME.*.tmp``)."""
    directory = Path(directory)
    for name in names:
        for stale in directory.glob(f"{_temporary_name(Path(name))}*{_TMP_SUFFIX}"):
            if stale.is_file():
                stale.unlink(missing_ok=True)


def _digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _self_digest(document: dict[str, Any]) -> str:
    body = {key: value for key, value in document.items() if key != "self_sha256"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def write_manifest(directory: str | os.PathLike[str], names: Iterable[str]) -> Path:
    """Writes ``manifest.json`` into ``directory`` (durably, after the files it lists): the
    size and sha256 of each of ``names``, files already in place there."""
    directory = Path(directory)
    files = {}
    for name in sorted(names):
        size, sha = _digest(directory / name)
        files[name] = {"sha256": sha, "size": size}
    document: dict[str, Any] = {"format": _FORMAT, "version": _VERSION, "files": files}
    document["self_sha256"] = _self_digest(document)
    text = _canonical(document).encode()
    write_durably(directory / MANIFEST_NAME, lambda tmp: tmp.write_bytes(text))
    return directory / MANIFEST_NAME


def _read_manifest(path: Path, caller: str) -> dict[str, dict[str, Any]]:
    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{caller}: {path} is corrupted ({reason}); the checkpoint cannot be verified")

    try:
        text = path.read_bytes().decode("utf-8")
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise bad(f"not a {_FORMAT!r} document")
    if document.get("version") != _VERSION:
        raise bad(f"version {document.get('version')!r}, this library reads version {_VERSION}")
    if text != _canonical(document) or document.get("self_sha256") != _self_digest(document):
        raise bad("its own checksum does not match")
    files = document.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        and name == Path(name).name and name not in ("", ".", "..")
        for name, entry in files.items()
    ):
        raise bad("malformed file list")
    return files


def verify_manifest(directory: str | os.PathLike[str], names: Iterable[str], *, caller: str) -> bool:
    """Checks each of ``names`` in ``directory`` against the manifest (size, then sha256).

    Args:
        directory: the checkpoint directory.
        names: the files the caller is about to read; each must be listed in the manifest.
        caller: the public function, for the message (``"load_pretrained"``).

    Returns:
        ``True`` when verified; ``False`` when ``directory`` has no ``manifest.json`` (a
        checkpoint written before manifests existed: the caller decides whether to trust it).

    Raises:
        CheckpointError: the manifest is corrupted, does not list one of ``names``, or a file is
            missing or differs from its entry (the message names the file).
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        return False
    files = _read_manifest(manifest, caller)
    for name in names:
        path = directory / name
        entry = files.get(name)
        if entry is None:
            state = "is not listed in" if path.is_file() else "does not exist and is not listed in"
            raise CheckpointError(f"{caller}: {path} {state} {manifest} (not the kind of checkpoint expected)")
        if not path.is_file():
            raise CheckpointError(f"{caller}: {path} does not exist (it is listed in {manifest})")
        size, sha = _digest(path)
        if size != entry["size"]:
            raise CheckpointError(
                f"{caller}: {path} does not match its manifest (size {size} bytes, expected {entry['size']}): "
                "the file is truncated or was changed")
        if sha != entry["sha256"]:
            raise CheckpointError(
                f"{caller}: {path} does not match its manifest (sha256 {sha[:16]}..., expected "
                f"{entry['sha256'][:16]}...): the file is corrupted or was changed")
    return True
