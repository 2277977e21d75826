"""Combine gates: the formulas of eqs. 25 and 28."""

from __future__ import annotations

import torch

from titans import NormalizedGate, ProductGate, SigmoidGate


def test_gates_follow_their_formulas(device):
    g = torch.Generator().manual_seed(0)
    y, m = (torch.randn(2, 3, 6, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    torch.testing.assert_close(ProductGate(6)(y, m), y * m)
    torch.testing.assert_close(SigmoidGate(6)(y, m), y * torch.sigmoid(m))
    gate = NormalizedGate(6).to(device=device, dtype=torch.float64)
    rms = lambda t: t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
    torch.testing.assert_close(gate(y, m), rms(y) * torch.sigmoid(rms(m)))
