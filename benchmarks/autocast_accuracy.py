"""How far bf16 autocast moves each model from float32 (the memory's inner loop stays float32).

Usage::

    python benchmarks/autocast_accuracy.py [--device cpu|cuda] [--dtype bf16|fp16] [--seq 512]

For every variant, one model (dim 128, 2 blocks, 4 heads, vocabulary 256, chunk 16, window 64)
runs the same random batch (2 x seq tokens) in float32 and under ``torch.autocast``; the table
gives the relative error of the logits (``||a - b|| / ||b||``), the difference of the loss, the
relative error of the gradient of every parameter (the largest, and over all parameters
together), and whether both runs were finite. A NeuralMemory layer alone (dim 256, one head,
the benchmark's shape) is the last row.
"""

from __future__ import annotations

import argparse

import torch

VARIANTS = ("mac", "mag", "mal", "lmm", "swa", "transformer")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def run(model: torch.nn.Module, fn, dtype: torch.dtype | None, device: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    if dtype is None:
        out, loss = fn()
    else:
        with torch.autocast(device, dtype=dtype):
            out, loss = fn()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), loss.detach(), grads


def compare(name: str, model: torch.nn.Module, fn, dtype: torch.dtype, device: str) -> str:
    out32, loss32, g32 = run(model, fn, None, device)
    out16, loss16, g16 = run(model, fn, dtype, device)
    finite = all(bool(torch.isfinite(t).all()) for t in [out32, out16, loss32, loss16, *g32.values(), *g16.values()])
    worst = max(rel(g16[n], g32[n]) for n in g32)
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[n].flatten().float() for n in g32])
    return (f"| {name} | {rel(out16, out32):.2e} | {abs(float(loss16) - float(loss32)):.2e} | "
            f"{rel(flat16, flat32):.2e} | {worst:.2e} | {finite} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    from memory_blocks import MLPMemory, NeuralMemory
    from titans import TitansConfig, TitansLM

    print(f"# {args.dtype} autocast against float32, {args.device}, batch 2 x {args.seq} tokens, torch {torch.__version__}")
    print("| model | logits rel. error | loss difference | all gradients rel. error | worst parameter's gradient rel. error | finite |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, args.seq + 1), generator=g).to(args.device)
    for variant in VARIANTS:
        torch.manual_seed(0)
        cfg = TitansConfig(variant=variant, vocab_size=256, dim=128, depth=2, heads=4, chunk_size=16,
                           window=64, segment_len=64, max_seq_len=args.seq)
        model = TitansLM(cfg).to(args.device)

        def fn(m=model):
            out = m(ids[:, :-1], labels=ids[:, 1:])
            return out.logits, out.loss

        print(compare(variant, model, fn, dtype, args.device), flush=True)
    torch.manual_seed(0)
    layer = NeuralMemory(256, heads=1, chunk_size=16, memory=MLPMemory(256, depth=2, expansion=4)).to(args.device)
    x = torch.randn(2, args.seq, 256, generator=g).to(args.device)

    def layer_fn():
        y, _ = layer(x)
        return y, y.float().square().mean()

    print(compare("NeuralMemory (dim 256)", layer, layer_fn, dtype, args.device), flush=True)


if __name__ == "__main__":
    main()
