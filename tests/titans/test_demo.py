"""The README's main job: the demo runs and the memory really recalls what it read."""

from __future__ import annotations

import torch

from memory_blocks import MLPMemory, NeuralMemory
from titans.demo import main, recall


def test_memory_recalls_pairs_after_reading_them() -> None:
    torch.manual_seed(0)
    layer = NeuralMemory(
        64, chunk_size=4, memory=MLPMemory(64, depth=2, expansion=4),
        optimizer="gd", lr_gate=0.003, decay_gate=None, conv_kernel=None, qkv_silu=False,
    ).requires_grad_(False)
    before, after = recall(layer, torch.randn(2, 32, 64), 4)
    assert before < 0.2 and after > 0.9


def test_demo_prints_the_table(capsys) -> None:
    main(["--dim", "16"])
    out = capsys.readouterr().out
    assert "recall before" in out and out.count("%") >= 12
