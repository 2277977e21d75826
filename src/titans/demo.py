"""A first look: a NeuralMemory memorises key-value pairs at test time and recalls them.

Run with ``python -m titans.demo`` (or ``scripts/demo``). Nothing is trained: the memory's fast
weights learn while the sequence is read (paper section 3), and recall is measured by reading
the memory with each key and checking that the nearest value is the right one.
"""

from __future__ import annotations

import argparse

import torch

from memory_blocks import MLPMemory, NeuralMemory, retrieve


def recall(layer: NeuralMemory, x: torch.Tensor, chunk_size: int) -> tuple[float, float]:
    """Recall accuracy before and after writing ``x``."""
    layer.chunk_size = chunk_size
    _, k, v = layer.project(x)
    with torch.no_grad():
        _, state = layer(x)
        before = retrieve(layer.memory, layer.init_state(x.shape[0]).memory, k)
        after = retrieve(layer.memory, state.memory, k)
    return _accuracy(before, v), _accuracy(after, v)


def _accuracy(pred: torch.Tensor, values: torch.Tensor) -> float:
    """Share of keys whose read-out is closer to their own value than to any other value."""
    dist = torch.cdist(pred, values)  # (batch, heads, pairs, pairs)
    return (dist.argmin(-1) == torch.arange(values.shape[-2])).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.003, help="the constant learning rate theta")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    layer = NeuralMemory(
        args.dim, heads=1, chunk_size=1,
        memory=MLPMemory(args.dim, depth=2, expansion=4),
        optimizer="gd", lr_gate=args.lr, decay_gate=None, conv_kernel=None, qkv_silu=False,
    ).requires_grad_(False)
    print(f"NeuralMemory(dim={args.dim}, MLP memory depth 2 x4): {sum(p.numel() for p in layer.parameters()):,} parameters, untrained")
    print(f"{'pairs':>6} {'chunk':>6} {'recall before':>14} {'recall after':>13}")
    for pairs in (16, 64, 256):
        x = torch.randn(4, pairs, args.dim)
        for chunk in (1, 8):
            b, a = recall(layer, x, chunk)
            print(f"{pairs:>6} {chunk:>6} {b:>14.1%} {a:>13.1%}")
    print("recall: share of keys whose read-out lies nearest to its own value (chance: 1/pairs)")


if __name__ == "__main__":
    main()
