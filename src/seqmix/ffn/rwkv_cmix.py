"""RWKV's channel-mix (Peng et al. 2023, §3.1): a token-shifted, receptance-gated squared-ReLU FFN."""
from __future__ import annotations

import torch
from torch import nn

from seqmix.ffn.base import FFN, register_ffn
from seqmix.layers import Linear, token_shift
from seqmix.registry import POSITIVE, Annotated


@register_ffn("rwkv_cmix")
class RWKVChannelMix(FFN):
    """y = σ(W_r x_r) ⊙ W_v relu(W_k x_k)², with x_k, x_r per-channel lerps of x_t and x_{t-1}.

    Hidden width ``hidden`` (default 4·d_model, RWKV-4's). μ init (i/C)^(1 - layer/n_layers) as the official
    code. It carries its own token shift, so it has a state: {"shift": [B, C] the last input}.
    """

    def __init__(self, d_model: int, *, layer_idx: int = 0, n_layers: int = 1,
                 hidden: Annotated[int, POSITIVE] | None = None):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers)
        hidden = 4 * d_model if hidden is None else hidden
        mix = (torch.arange(d_model, dtype=torch.float32) / d_model) ** (1.0 - layer_idx / n_layers)
        self.time_mix_k = nn.Parameter(mix.clone())
        self.time_mix_r = nn.Parameter(mix.clone())
        self.key = Linear(d_model, hidden, bias=False)
        self.receptance = Linear(d_model, d_model, bias=False)
        self.value = Linear(hidden, d_model, bias=False)

    def init_state(self, batch_size: int) -> dict:
        return {"shift": self.time_mix_k.new_zeros(batch_size, self.d_model)}

    def forward(self, x, state=None):
        x_prev, last = token_shift(x, None if state is None else state["shift"])
        xk = x * self.time_mix_k + x_prev * (1 - self.time_mix_k)
        xr = x * self.time_mix_r + x_prev * (1 - self.time_mix_r)
        y = torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)).square())
        return y, (None if state is None else {"shift": last})
