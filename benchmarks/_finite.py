"""Whether a finished training run is finite throughout: a recall measured on NaN is no figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from titans.checkpoint import load_pretrained
from titans.experiments.run_checkpoint import latest_checkpoint
from titans.experiments.train import METRICS_NAME


def run_is_finite(result: dict, run_dir: Path) -> bool:
    """``True`` when the run did not diverge, every logged training loss is finite, every
    parameter of its last checkpoint is finite (so no step's gradient left a NaN behind), and
    every evaluation output was finite."""
    if result.get("diverged") or not all(row["finite"] for row in result["eval"]):
        return False
    records = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines() if line.strip()]
    if not all(math.isfinite(r["loss"]) for r in records if r.get("kind") == "train"):
        return False
    model = load_pretrained(latest_checkpoint(run_dir))
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
