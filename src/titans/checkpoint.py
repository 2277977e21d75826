"""Saving and loading a :class:`TitansLM` as functions (the same as its methods
:meth:`TitansLM.save_pretrained` / :meth:`TitansLM.from_pretrained`): safetensors weights plus a
JSON config, verified by a manifest. Never unpickles.

A checkpoint is a directory::

    config.json          {"format": "titans-config", "version": 2, "config": {...},
                          "dtype": "float32", "manifest": "manifest.json"}
    model.safetensors    the weights (a tied matrix stored once)
    manifest.json        each file's size and sha256 (:mod:`titans.manifest`), written last

The files and their checks live in :mod:`titans.checkpoint_io` (below the model, so that the
model's own methods rest on them); this module re-exports the names a user of checkpoints
meets: the error, the file names, and the config reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from titans.checkpoint_io import CONFIG_NAME, MODEL_FILES, WEIGHTS_NAME, CheckpointError, load_checkpoint_config
from titans.model import TitansLM

__all__ = [
    "CONFIG_NAME",
    "MODEL_FILES",
    "WEIGHTS_NAME",
    "CheckpointError",
    "load_checkpoint_config",
    "load_pretrained",
    "save_pretrained",
]


def save_pretrained(model: TitansLM, directory: str | os.PathLike[str]) -> Path:
    """:meth:`TitansLM.save_pretrained` as a function: writes ``config.json``,
    ``model.safetensors`` and, last, ``manifest.json`` into ``directory``, each durably.

    Args:
        model: the model to save.
        directory: where to write the files (created if missing).

    Returns:
        The path of ``directory``.

    Raises:
        ValueError: ``model`` is not a ``TitansLM``.
        TypeError: ``directory`` is not a str or path.
        FloatingPointError: a parameter or buffer holds NaN or inf; nothing is written.
    """
    if not isinstance(model, TitansLM):
        raise ValueError(f"save_pretrained: expected a TitansLM, got {type(model).__name__}")
    return model.save_pretrained(directory)


def load_pretrained(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> TitansLM:
    """:meth:`TitansLM.from_pretrained` as a function: the model saved in ``directory``, its files
    checked against the manifest, in its saved dtype, on ``device``.

    Args:
        directory: a directory written by :func:`save_pretrained`.
        device: the device to load the weights onto.

    Returns:
        The loaded :class:`TitansLM`.

    Raises:
        CheckpointError: a file is missing, does not match its manifest, is unreadable, or the
            weights do not fit the config (the message names the file). A ``ValueError``.
        ValueError: ``device`` is not a device, or CUDA is not available.
    """
    return TitansLM.from_pretrained(directory, device=device)
