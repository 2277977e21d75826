"""A run's ``metrics.jsonl``: one strict JSON object per line, appended as training goes.

Every record goes through :func:`titans.experiments.evaluate.json_safe` and ``json.dumps(allow_nan=False)``,
so a non-finite number is written as the string ``"nan"``, ``"inf"`` or ``"-inf"``, never as a
bare ``NaN`` token. Each record is one ``write`` of a whole line; a process killed in the middle
of it leaves a *torn* last line (no newline at its end), which :func:`read_records` drops with a
warning. Any other line that is not a JSON object with an integer ``"step"`` is an error naming
the file and the line.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from titans.experiments.evaluate import json_safe

__all__ = ["METRICS_NAME", "append_record", "read_records", "truncate_after"]

METRICS_NAME = "metrics.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Appends ``record`` to ``path`` as one line of strict JSON (non-finite floats as strings)."""
    line = json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n"
    with path.open("a") as handle:
        handle.write(line)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"the non-JSON constant {name}")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file, in order (``[]`` if it does not exist).

    A torn last line (not ending in a newline, not valid JSON: the writer died mid-line) is
    dropped with a ``RuntimeWarning`` naming the file.

    Raises:
        ValueError: a line other than a torn last one is not a JSON object with an integer
            ``"step"`` (or holds a bare ``NaN``/``Infinity``); the message names the file and
            the line number.
    """
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline, as every complete write does
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            records.append(_parse(path, number, line))
    if torn.strip():
        try:
            records.append(_parse(path, len(lines) + 1, torn))
        except ValueError:
            warnings.warn(f"{path}: dropped the torn last line {len(lines) + 1} (a run stopped while "
                          f"writing it): {torn[:80]!r}", RuntimeWarning, stacklevel=2)
    return records


def _parse(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line, parse_constant=_reject_constant)
    except ValueError as err:  # json.JSONDecodeError is a ValueError, as is _reject_constant's
        raise ValueError(f"{path}: line {number} is not valid JSON ({err}): {line[:80]!r}") from None
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"{path}: line {number} is not a metrics record with an integer \"step\": {line[:80]!r}")
    return record


def truncate_after(path: Path, step: int) -> None:
    """Rewrites ``path`` without the records after ``step`` (those written after the checkpoint
    a run resumes from) and without a torn last line; atomically (temporary file, rename)."""
    if not path.is_file():
        return
    kept = [record for record in read_records(path) if record["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        handle.write("".join(json.dumps(record, sort_keys=True, allow_nan=False) + "\n" for record in kept))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
