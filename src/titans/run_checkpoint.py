"""Training checkpoints: the model (safetensors + JSON), the optimizer and schedule, atomically.

A run directory holds numbered checkpoints and a pointer to the newest one::

    out/
      metrics.jsonl
      LATEST                      "checkpoint-00000100" (replaced atomically)
      checkpoint-00000100/
        config.json               model config (titans.save_pretrained)
        model.safetensors         weights     (titans.save_pretrained)
        optimizer.pt              AdamW state, plain tensors: loaded with weights_only=True
        trainer_state.json        step, train config, task, scheduler state, metrics offset

A checkpoint is written into a temporary directory and renamed into place; only then does
``LATEST`` move (``os.replace`` of a file). An interrupted write leaves the previous checkpoint
and ``LATEST`` untouched; stale temporary directories are removed on the next write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from titans.checkpoint import CONFIG_NAME, load_pretrained, save_pretrained
from titans.model import TitansLM

__all__ = ["checkpoint_note", "latest_checkpoint", "load_training_state", "save_training_checkpoint"]

LATEST = "LATEST"
OPTIMIZER_NAME = "optimizer.pt"
STATE_NAME = "trainer_state.json"
_TMP_PREFIX = ".tmp-checkpoint-"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_training_checkpoint(
    out_dir: Path,
    model: TitansLM,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Writes ``checkpoint-{step:08d}`` under ``out_dir`` atomically, points ``LATEST`` at it and
    keeps the newest ``keep`` checkpoints. ``state`` must be JSON-able and hold ``"step"``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale)
    name = f"checkpoint-{int(state['step']):08d}"
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=_TMP_PREFIX))
    os.chmod(tmp, 0o755)
    save_pretrained(model, tmp)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2, sort_keys=True))
    final = out_dir / name
    if final.exists():  # the same step written again (a resumed run that re-saves it)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(out_dir / LATEST, name)
    for old in sorted(out_dir.glob("checkpoint-*"))[:-keep]:
        if old.name != name:
            shutil.rmtree(old)
    return final


def latest_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory ``path`` names: itself if it holds a model config, else the one
    its ``LATEST`` file points at. ``FileNotFoundError`` if there is none."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    pointer = path / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"no checkpoint in {path} (neither {CONFIG_NAME} nor {LATEST})")
    target = path / pointer.read_text().strip()
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


def load_training_state(
    checkpoint: Path, device: torch.device
) -> tuple[TitansLM, dict[str, Any], dict[str, Any]]:
    """``(model, optimizer_state_dict, trainer_state)`` of a checkpoint directory. The optimizer
    state is read with ``torch.load(weights_only=True)``: tensors and plain containers only."""
    for name in (OPTIMIZER_NAME, STATE_NAME):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"{checkpoint / name} does not exist (not a training checkpoint)")
    model = load_pretrained(checkpoint, device=device)
    optimizer_state = torch.load(checkpoint / OPTIMIZER_NAME, map_location=device, weights_only=True)
    trainer_state = json.loads((checkpoint / STATE_NAME).read_text())
    return model, optimizer_state, trainer_state
