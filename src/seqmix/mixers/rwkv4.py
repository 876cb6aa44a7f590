"""RWKV-4 time-mix (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", §3)."""
from __future__ import annotations

import math

import torch
from torch import nn

from seqmix.layers import Linear, cached, token_shift
from seqmix.mixers.base import Mixer, register_mixer
from seqmix.ops import wkv4 as op
from seqmix.registry import POSITIVE, Annotated


@register_mixer("rwkv4")
class RWKV4(Mixer):
    """Token shift, then r, k, v projections, then out = W_o(σ(r) ⊙ WKV(w, u, k, v)).

    Each projection reads a per-channel lerp of the token and the previous one: x·μ + x_{t-1}·(1 - μ).
    WKV (ops.wkv4) is channel-wise with decay w = exp(time_decay) and bonus u = time_first; n_heads plays
    no part. Initialisation follows the official v4neo code (decay spread -5..3 over channels, deeper
    layers decay slower; zigzag bonus around log 0.3; μ = (i/C)^(1 - layer/n_layers)); Linear layers use
    PyTorch's default init. Options: ``chunk_size`` of the chunked WKV; ``d_attn`` the width A of k, v, r
    and the WKV channels (None = d_model; transformers' ``attention_hidden_size``).
    State: {"shift": [B, C] last input, "a", "b", "p": [B, 1, A] the WKV max-trick state, ≥ float32}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 chunk_size: Annotated[int, POSITIVE] = 8, d_attn: Annotated[int, POSITIVE] | None = None):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        A = d_model if d_attn is None else d_attn
        self.chunk_size, self.d_attn = chunk_size, A
        C = d_model
        ratio_0_to_1 = layer_idx / (n_layers - 1) if n_layers > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - layer_idx / n_layers
        a = torch.arange(A, dtype=torch.float32)
        self.time_decay = nn.Parameter(-5 + 8 * (a / max(A - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1))
        zigzag = ((a + 1) % 3 - 1) * 0.5
        self.time_first = nn.Parameter(math.log(0.3) + zigzag)
        ramp = torch.arange(C, dtype=torch.float32) / C
        self.time_mix_k = nn.Parameter(ramp ** ratio_1_to_almost0)
        self.time_mix_v = nn.Parameter(ramp ** ratio_1_to_almost0 + 0.3 * ratio_0_to_1)
        self.time_mix_r = nn.Parameter(ramp ** (0.5 * ratio_1_to_almost0))
        self.key = Linear(C, A, bias=False)
        self.value = Linear(C, A, bias=False)
        self.receptance = Linear(C, A, bias=False)
        self.output = Linear(A, C, bias=False)

    def init_state(self, batch_size: int):
        shift = self._zeros(batch_size, self.d_model)
        a, b, p = op.init_state(batch_size, 1, self.d_attn, torch.promote_types(shift.dtype, torch.float32),
                                shift.device)
        return {"shift": shift, "a": a, "b": b, "p": p}

    def forward(self, x, state=None, shared=None):
        x_prev, last = token_shift(x, None if state is None else state["shift"])

        def lerp(mu):
            return x * mu + x_prev * (1 - mu)

        k = self.key(lerp(self.time_mix_k)).unsqueeze(1)  # [B, 1, T, C]
        v = self.value(lerp(self.time_mix_v)).unsqueeze(1)
        r = torch.sigmoid(self.receptance(lerp(self.time_mix_r)))
        w, u = cached(self, "w", (self.time_decay,), self.time_decay.exp), self.time_first
        wkv_state = None if state is None else (state["a"], state["b"], state["p"])
        if x.shape[1] == 1 and state is not None:
            wkv, wkv_state = op.step(k[:, :, 0], v[:, :, 0], w, u, wkv_state)
            wkv = wkv.unsqueeze(2)
        else:
            wkv, wkv_state = op.chunked(k, v, w, u, wkv_state, chunk_size=self.chunk_size)
        y = self.output(r * wkv.squeeze(1))
        if state is None:
            return y, None
        a, b, p = wkv_state
        return y, {"shift": last, "a": a, "b": b, "p": p}
