"""RWKV's token shift: every position sees the previous token's input, carried across calls."""
from __future__ import annotations

import torch


def token_shift(x: torch.Tensor, last: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, C] -> (x_prev [B, T, C], new_last [B, C]) with x_prev_t = x_{t-1}.

    ``last`` is the input of the token before this call (None = zeros, the start of a sequence, which is
    RWKV's ``ZeroPad2d((0, 0, 1, -1))``); ``new_last`` is this call's last input, to pass to the next call.
    RWKV interpolates x_t and x_{t-1} per channel (lerp with a learned or data-dependent μ) before each
    projection; the interpolation belongs to the mixer, the shift and its state live here.
    """
    if last is None:
        last = x.new_zeros(x.shape[0], x.shape[-1])
    x_prev = torch.cat([last.unsqueeze(1), x[:, :-1]], dim=1)
    return x_prev, x[:, -1]
