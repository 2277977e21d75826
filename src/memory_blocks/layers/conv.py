"""Short causal depthwise convolution over time, with a streaming state."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["CausalDepthwiseConv"]


class CausalDepthwiseConv(nn.Module):
    """Depthwise 1D convolution that only looks back: ``y_t = sum_j w_j * x_{t-j} + b``.

    The paper (section 4.4) places one after each of the q, k, v projections (kernel 4).
    Initialised to the identity (the newest tap is one, the others zero), so that a freshly
    built layer starts as if it had no convolution.

    Streaming: ``forward(x, state)`` takes the last ``kernel_size - 1`` inputs of the previous
    call (``None`` means zeros: the start of a sequence) and returns the new ones, so that
    feeding a sequence in pieces equals one call.

    Args:
        channels: features convolved independently.
        kernel_size: taps, the current token included (>= 1).
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"CausalDepthwiseConv: channels must be >= 1, got {channels}")
        if kernel_size < 1:
            raise ValueError(f"CausalDepthwiseConv: kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        weight = torch.zeros(channels, 1, kernel_size)
        weight[:, 0, -1] = 1.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(
        self,
        x: Float[Tensor, "batch seq channels"],
        state: Float[Tensor, "batch history channels"] | None = None,
    ) -> tuple[Float[Tensor, "batch seq channels"], Float[Tensor, "batch history2 channels"]]:
        """Returns the convolved sequence and the last ``kernel_size - 1`` inputs."""
        if x.ndim != 3 or x.shape[-1] != self.channels:
            raise ValueError(
                f"CausalDepthwiseConv: expected input (batch, seq, {self.channels}), "
                f"got {tuple(x.shape)}"
            )
        history = self.kernel_size - 1
        if state is None:
            state = x.new_zeros(x.shape[0], history, self.channels)
        elif state.shape != (x.shape[0], history, self.channels):
            raise ValueError(
                f"CausalDepthwiseConv: state must have shape {(x.shape[0], history, self.channels)}, "
                f"got {tuple(state.shape)}"
            )
        full = torch.cat([state, x], dim=1)
        # A sum of shifted copies: for a few taps this is much faster than F.conv1d on CPU
        # (whose depthwise kernel threads poorly on short inputs) and equal to it.
        seq = x.shape[1]
        taps = self.weight[:, 0, :]  # (channels, kernel)
        y = self.bias + full[:, history:] * taps[:, -1]
        for j in range(history):
            y = torch.addcmul(y, full[:, j : j + seq], taps[:, j])
        return y, full[:, full.shape[1] - history :]

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"
