"""Gated linear attention (Yang et al. 2023) with data-dependent per-channel or per-head decay."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import GatedRMSNorm, Linear, ShortConv
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import gated_linear_attention as op
from seqmix.registry import POSITIVE, Annotated, Literal


@register_mixer("gla")
class GatedLinearAttention(Mixer):
    """S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t / √dk, then RMSNorm(o) ⊙ silu(gate) -> out proj.

    log α_t = logsigmoid(W_α x_t) / gate_logit_normalizer, W_α low rank (``gate_low_rank``), per key
    channel (``decay="channel"``, GLA) or one per head (``decay="scalar"``, RetNet-like but data dependent).
    Key/value widths per head are ``expand_k``/``expand_v`` × d_model / n_heads.
    State: {"S": [B, H, dk, dv], "conv": [B, K-1, ·] if short_conv}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 decay: Literal["channel", "scalar"] = "channel", expand_k: Annotated[float, POSITIVE] = 0.5,
                 expand_v: Annotated[float, POSITIVE] = 1.0, gate_low_rank: Annotated[int, POSITIVE] = 16,
                 gate_logit_normalizer: Annotated[float, POSITIVE] = 16.0, short_conv: bool = False,
                 conv_size: Annotated[int, POSITIVE] = 4, chunk_size: Annotated[int, POSITIVE] = 32):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        self.dk, self.dv = int(self.head_dim * expand_k), int(self.head_dim * expand_v)
        if self.dk < 1 or self.dv < 1:
            raise ValueError(f"gla: expand_k={expand_k}, expand_v={expand_v} give an empty head for head_dim={self.head_dim}")
        H = n_heads
        self.decay, self.normalizer, self.chunk_size = decay, gate_logit_normalizer, chunk_size
        self.q = Linear(d_model, H * self.dk, bias=False)
        self.k = Linear(d_model, H * self.dk, bias=False)
        self.v = Linear(d_model, H * self.dv, bias=False)
        self.gate = Linear(d_model, H * self.dv, bias=False)
        decay_out = H * self.dk if decay == "channel" else H
        self.alpha = nn.Sequential(Linear(d_model, gate_low_rank, bias=False), Linear(gate_low_rank, decay_out))
        self.conv = ShortConv(H * (2 * self.dk + self.dv), conv_size) if short_conv else None
        self.norm = GatedRMSNorm(H * self.dv, group_size=self.dv)
        self.out = Linear(H * self.dv, d_model, bias=False)

    def init_state(self, batch_size: int):
        state = {"S": self._zeros(batch_size, self.n_heads, self.dk, self.dv)}
        if self.conv is not None:
            state["conv"] = self.conv.init_state(batch_size)
        return state

    def forward(self, x, state=None, shared=None):
        H = self.n_heads
        q, k, v = self.q(x), self.k(x), self.v(x)
        new_state = {}
        if self.conv is not None:  # one convolution over the three projections side by side
            qkv, new_state["conv"] = self.conv(torch.cat([q, k, v], dim=-1), None if state is None else state["conv"])
            q, k, v = qkv.split([H * self.dk, H * self.dk, H * self.dv], dim=-1)
        q, k, v = split_heads(q, H), split_heads(k, H), split_heads(v, H)
        log_alpha = split_heads(F.logsigmoid(self.alpha(x)) / self.normalizer, H)  # [B, H, T, dk or 1]
        S = None if state is None else state["S"]
        scale = self.dk ** -0.5
        if x.shape[1] == 1 and state is not None:
            o, S = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_alpha[:, :, 0], S, scale)
            o = o[:, :, None]
        else:
            o, S = op.chunked(q, k, v, log_alpha, S, scale, self.chunk_size)
        o = self.norm(merge_heads(o), self.gate(x))
        new_state["S"] = S
        return self.out(o), (None if state is None else new_state)

