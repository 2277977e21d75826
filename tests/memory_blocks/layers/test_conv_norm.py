"""The causal convolution against F.conv1d, its streaming state, and RMSNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_blocks import CausalDepthwiseConv, RMSNorm


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), seq=st.integers(1, 12), kernel=st.integers(1, 5), cut=st.integers(0, 12))
def test_conv_equals_padded_conv1d_and_streams(seed: int, seq: int, kernel: int, cut: int) -> None:
    torch.manual_seed(seed)
    conv = CausalDepthwiseConv(6, kernel).double()
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
    x = torch.randn(2, seq, 6, dtype=torch.float64)
    y, _ = conv(x)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (kernel - 1, 0)), conv.weight, conv.bias, groups=6).transpose(1, 2)
    torch.testing.assert_close(y, ref)
    cut = min(cut, seq)
    if 0 < cut < seq:
        y1, state = conv(x[:, :cut])
        y2, _ = conv(x[:, cut:], state)
        torch.testing.assert_close(torch.cat([y1, y2], dim=1), y)


def test_conv_starts_as_identity_and_rejects_bad_input() -> None:
    conv = CausalDepthwiseConv(3)
    x = torch.randn(1, 5, 3)
    torch.testing.assert_close(conv(x)[0], x)
    with pytest.raises(ValueError, match="kernel_size"):
        CausalDepthwiseConv(3, 0)


def test_rms_norm() -> None:
    norm = RMSNorm(4)
    x = torch.randn(3, 4)
    torch.testing.assert_close(norm(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
