"""Causal depthwise ("short") convolution with a carried tail, as used by Mamba, Mamba-2, GLA and TTT."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    """y_t = Σ_{j<K} w_j ⊙ x_{t-K+1+j} (+ bias), channel-wise, causal.

    The state is the tail: the last K-1 *inputs* [B, K-1, C], so a sequence may be cut anywhere.
    Shapes: x [B, T, C] -> y [B, T, C]. The weights live in an ``nn.Conv1d`` (the usual parameter layout),
    but the sum is taken in the [B, T, C] layout, never transposed to the channel-first layout conv1d wants:
    while autograd records, as K shifted multiply-adds (about 2× faster than conv1d forward and backward);
    otherwise as one depthwise conv2d over the same memory read as channels-last (2× faster again), which
    pads x itself with K-1 zeros instead of copying it behind the tail (the first K-1 outputs are then
    redone over the tail's window); at T = 1 (decoding) as a single multiply-and-sum over the window
    (conv1d's dispatch alone costs ten times that).
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias)

    def init_state(self, batch_size: int) -> torch.Tensor:
        w = self.conv.weight
        return w.new_zeros(batch_size, self.kernel_size - 1, w.shape[0])

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (y, new_tail). tail None means zeros (start of a sequence)."""
        T, K = x.shape[1], self.kernel_size
        if T < K or self._recording(x):
            window = self.window(x, tail)
            return self.over_window(window, T), window[:, T:]
        y = self._conv2d(x, padding=K - 1)[:, :T]  # as if the tail were zeros
        if tail is not None:  # the outputs that see the tail
            y[:, :K - 1] = self.over_window(self.window(x[:, :K - 1], tail), K - 1)
        return y, x[:, T - K + 1:].clone()  # not a view: the state must not hold on to x

    def window(self, x: torch.Tensor, tail: torch.Tensor | None = None) -> torch.Tensor:
        """[tail, x] [B, K-1+T, C]: what the outputs for x see. Convolutions of one input share it."""
        if tail is None:
            tail = self.init_state(x.shape[0]).to(x.dtype)
        return torch.cat([tail, x], dim=1)

    def over_window(self, window: torch.Tensor, T: int) -> torch.Tensor:
        """y [B, T, C] from `window` (the last T positions are the outputs')."""
        w, bias = self.conv.weight[:, 0].t(), self.conv.bias  # w [K, C]
        if T == 1:  # decoding: one multiply-and-sum over the window
            y = (window * w).sum(1, keepdim=True)
            return y if bias is None else y + bias
        if not self._recording(window):
            # no graph to record: one depthwise conv2d reads [B, T, C] as channels-last [B, C, 1, T] in place,
            # about 2× faster than the taps below (whose backward is the faster one, so training keeps them)
            return self._conv2d(window)
        y = window[:, :T] * w[0] if bias is None else torch.addcmul(bias, window[:, :T], w[0])
        for j in range(1, self.kernel_size):
            y = torch.addcmul(y, window[:, j:j + T], w[j])
        return y

    def _recording(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad)

    def _conv2d(self, x: torch.Tensor, padding: int = 0) -> torch.Tensor:
        """The depthwise conv2d over x [B, T', C] read as channels-last [B, C, 1, T'], with `padding` zeros on
        both ends: y [B, T' + 2 padding − K + 1, C]."""
        y = F.conv2d(x.transpose(1, 2).unsqueeze(2), self.conv.weight.unsqueeze(2), self.conv.bias,
                     padding=(0, padding), groups=x.shape[2])
        return y.squeeze(2).transpose(1, 2)
