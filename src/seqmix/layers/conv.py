"""Causal depthwise ("short") convolution with a carried tail, as used by Mamba, Mamba-2, GLA and TTT."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    """y_t = Σ_{j<K} w_j ⊙ x_{t-K+1+j} (+ bias), channel-wise, causal.

    The state is the tail: the last K-1 *inputs* [B, K-1, C], so a sequence may be cut anywhere.
    Shapes: x [B, T, C] -> y [B, T, C].
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
        if tail is None:
            tail = self.init_state(x.shape[0]).to(x.dtype)
        xt = torch.cat([tail, x], dim=1)
        if x.shape[1] == 1:  # decoding: a multiply-and-sum over the window costs a tenth of conv1d's dispatch
            conv = self.conv
            y = (xt * conv.weight[:, 0].t()).sum(1, keepdim=True)
            return (y if conv.bias is None else y + conv.bias), xt[:, 1:]
        y = F.conv1d(xt.transpose(1, 2), self.conv.weight, self.conv.bias, groups=xt.shape[-1]).transpose(1, 2)
        return y, xt[:, xt.shape[1] - (self.kernel_size - 1):]
