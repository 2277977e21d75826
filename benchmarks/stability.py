"""Does the memory's inner learning stay finite? A table of NeuralMemory layers, at
initialisation, reading 1,024 tokens of three kinds of input.

For each memory (the ``tiny`` and ``170m`` presets' memory layers, and the 170m layer with a
linear memory), each learning-rate gate start value and chunk size, the script runs one
forward pass (no training) over

- ``random``: independent Gaussian inputs,
- ``repeat``: one input repeated 1,024 times (as filler or padding tokens are),
- ``periodic``: 16 inputs repeated 64 times,

and prints whether the output is finite and the largest fast-weight entry at the end.
Run: ``python benchmarks/stability.py [--threads 2]``. Figures: docs/guides/stability.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import torch

from memory_blocks import LearnedGate
from titans import TitansConfig
from titans.builders import build_memory

LENGTH = 1024
THETAS = (0.01, 0.001, 0.01 / 16)


def inputs(dim: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "random": torch.randn(1, LENGTH, dim, generator=gen),
        "repeat": torch.randn(1, 1, dim, generator=gen).expand(1, LENGTH, dim).contiguous(),
        "periodic": torch.randn(1, 16, dim, generator=gen).repeat(1, LENGTH // 16, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    cases = [("tiny", "mlp"), ("170m", "mlp"), ("170m", "linear")]
    for (preset, memory), theta, chunk in itertools.product(cases, THETAS, (1, 16)):
        config = dataclasses.replace(TitansConfig.preset(preset, variant="lmm"), memory_model=memory, chunk_size=chunk)
        torch.manual_seed(0)
        layer = build_memory(config)
        layer.lr_gate = LearnedGate(config.dim, layer.heads, init=theta, max_value=0.1)
        began = time.perf_counter()
        cells = []
        for x in inputs(config.dim).values():
            with torch.no_grad():
                y, state = layer(x)
            largest = max(float(w.abs().max()) for w in state.memory.weights.values())
            cells.append(f"{'finite' if bool(y.isfinite().all()) else 'NaN':>6} {largest:9.2g}")
        rows.append(f"| {preset:5s} | {memory:6s} | {config.resolved_dim_head:4d} | {theta:6g} | {chunk:5d} | "
                    + " | ".join(cells) + f" | {time.perf_counter() - began:5.1f} |")
    print(f"NeuralMemory at initialisation over {LENGTH} tokens; gates: theta as given (learned gate, max 0.1), "
          "eta 0.9, alpha 0.01 (the defaults); 'max |W|' = largest fast-weight entry at the end")
    print("| preset | memory | d_head | theta | chunk | random: output, max W | repeat | periodic | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
