"""Every preset and memory variant at initialisation: finite logits on random, repeated and
periodic ids, at lengths beyond a few hundred tokens (where the literal update returned NaN).

- ``tiny`` and ``170m``: whole ``TitansLM`` models of each memory variant (mac, mag, mal, lmm);
- ``340m`` and ``760m``: their memory layers (``build_memory``) on Gaussian inputs of the same
  three kinds (random, one vector repeated, 16 vectors repeated);
- the reference MAC snippet (``TitansMACConfig(num_tokens=10000, d_model=256, depth=2,
  num_heads=4, dim_head=64, segment_len=32, num_longterm_mem_tokens=4, persistent_size=8,
  neural_memory_segment_len=36, context_window=256)``) at 4x its context window.

Run: ``python benchmarks/preset_stability.py [--length 2048] [--rules literal] [--only reference]``
(``--only reference``: the snippet alone).
Figures: docs/guides/stability.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from titans import TitansConfig, TitansLM
from titans.builders import build_memory
from titans.compat import TitansMACConfig, TitansMACForCausalLM

VARIANTS = ("mac", "mag", "mal", "lmm")


def ids(kind: str, vocab: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        return torch.randint(0, vocab, (1, length), generator=g)
    if kind == "repeat":
        return torch.full((1, length), 7)
    return torch.randint(0, vocab, (1, 16), generator=g).repeat(1, length // 16)


def vectors(kind: str, dim: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        return torch.randn(1, length, dim, generator=g)
    if kind == "repeat":
        return torch.randn(1, 1, dim, generator=g).expand(1, length, dim).contiguous()
    return torch.randn(1, 16, dim, generator=g).repeat(1, length // 16, 1)


def first_bad(t: torch.Tensor) -> str:
    """``finite``, or the first position whose values are not."""
    bad = (~torch.isfinite(t)).flatten(2).any(-1).any(0)
    return "finite" if not bool(bad.any()) else f"NaN from {int(bad.nonzero()[0])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--rules", choices=("default", "literal"), default="default")
    parser.add_argument("--only", choices=("all", "reference"), default="all",
                        help="reference: only the reference MAC snippet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    literal = {"step_scale": "literal", "forget_target": "zero"} if args.rules == "literal" else {}
    kinds = ("random", "repeat", "periodic")
    print(f"rules={args.rules} length={args.length}")
    print("| model | variant | " + " | ".join(kinds) + " | s |")
    print("|---|---|" + "---|" * len(kinds) + "---:|")
    for preset in ("tiny", "170m") if args.only == "all" else ():
        for variant in VARIANTS:
            torch.manual_seed(0)
            config = TitansConfig.preset(preset, variant=variant, **literal)
            config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, args.length))
            model = TitansLM(config).eval()
            began = time.perf_counter()
            with torch.no_grad():
                cells = [first_bad(model(ids(k, config.vocab_size, args.length)).logits) for k in kinds]
            print(f"| {preset} (whole model) | {variant} | " + " | ".join(cells) +
                  f" | {time.perf_counter() - began:.0f} |", flush=True)
    for preset in ("340m", "760m") if args.only == "all" else ():
        torch.manual_seed(0)
        layer = build_memory(TitansConfig.preset(preset, variant="mag", **literal))
        began = time.perf_counter()
        with torch.no_grad():
            cells = [first_bad(layer(vectors(k, layer.dim, args.length))[0]) for k in kinds]
        print(f"| {preset} (memory layer) | any | " + " | ".join(cells) + f" | {time.perf_counter() - began:.0f} |",
              flush=True)
    reference = TitansMACConfig(num_tokens=10000, d_model=256, depth=2, num_heads=4, dim_head=64, segment_len=32,
                                num_longterm_mem_tokens=4, persistent_size=8, neural_memory_segment_len=36,
                                context_window=256)
    torch.manual_seed(0)
    model = TitansMACForCausalLM(reference).eval()
    print(f"(the snippet's memory chunk: {reference.to_titans_config().chunk_size} segment tokens)")
    if literal:
        model.model = TitansLM(dataclasses.replace(reference.to_titans_config(), **literal)).eval()
    length = 4 * reference.context_window
    began = time.perf_counter()
    with torch.no_grad():
        cells = [first_bad(model(ids(k, reference.num_tokens, length)).logits) for k in kinds]
    print(f"| reference MAC snippet, {length} tokens (4x its context window) | mac | " + " | ".join(cells) +
          f" | {time.perf_counter() - began:.0f} |", flush=True)


if __name__ == "__main__":
    main()
