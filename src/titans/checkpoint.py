"""Saving and loading a :class:`TitansLM`: safetensors weights plus a JSON config. Never unpickles.

A checkpoint is a directory::

    config.json          {"format": "titans-config", "config": {...}, "dtype": "float32"}
    model.safetensors    the weights (a tied matrix stored once)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from titans.config import TitansConfig
from titans.model import TitansLM

__all__ = ["load_pretrained", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def save_pretrained(model: TitansLM, directory: str | os.PathLike[str]) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
    if not isinstance(model, TitansLM):
        raise ValueError(f"save_pretrained: expected a TitansLM, got {type(model).__name__}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    dtype = str(model.embedding.weight.dtype).removeprefix("torch.")
    document = json.loads(model.config.to_json())
    document["dtype"] = dtype
    (path / CONFIG_NAME).write_text(json.dumps(document, indent=2, sort_keys=True))
    save_model(model, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    return path


def load_pretrained(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> TitansLM:
    """Builds the model from ``config.json`` and loads ``model.safetensors`` into it (strict:
    every tensor must match), in the dtype it was saved in, on ``device``."""
    path = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ValueError(f"load_pretrained: {path / name} does not exist")
    document = json.loads((path / CONFIG_NAME).read_text())
    dtype_name = document.pop("dtype", "float32")
    if dtype_name not in _DTYPES:
        raise ValueError(f"load_pretrained: unknown dtype {dtype_name!r} in {path / CONFIG_NAME}")
    config = TitansConfig.from_json(json.dumps(document))
    model = TitansLM(config).to(device=torch.device(device), dtype=_DTYPES[dtype_name])
    missing, unexpected = load_model(model, str(path / WEIGHTS_NAME), strict=True, device=str(torch.device(device)))
    if missing or unexpected:  # strict loading raises first; this guards a future relaxation
        raise ValueError(f"load_pretrained: missing {missing}, unexpected {unexpected}")
    return model
