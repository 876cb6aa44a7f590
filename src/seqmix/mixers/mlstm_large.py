"""xLSTM-7B's mLSTM layer (Beck et al. 2025, "xLSTM 7B"): dense projections, soft-capped gates, no convolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import Linear
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import mlstm as op
from seqmix.registry import POSITIVE, Annotated


@register_mixer("mlstm_large")
class MLSTMLarge(Mixer):
    """[q, k, v, õ] = W x (widths qk_dim, qk_dim, v_dim, v_dim);  [ĩ, f̃] = cap · tanh((W_g x + b_g) / cap) per head;
    h = mLSTM(q, k, v; log i = ĩ, log f = logsigmoid(f̃)) with scale 1/√d_qk (ops.mlstm);
    y = W_out (σ(õ) ⊙ w ⊙ LayerNorm_head(h))  (LayerNorm over each head's channels, no affine; w per channel).

    As transformers' ``xLSTMLayer`` (xLSTM-7B). Options: ``qk_dim`` (None = d_model / 2), ``v_dim`` (None =
    d_model), both divisible by n_heads; ``gate_soft_cap`` (None = no cap); ``eps`` (of the mLSTM normaliser),
    ``norm_eps``, ``chunk_size``. Init: zero gate weights, forget bias linspace(3, 6), input bias −10.
    State: {"C": [B, H, d_qk, d_v], "n": [B, H, d_qk], "m": [B, H]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 qk_dim: Annotated[int, POSITIVE] | None = None, v_dim: Annotated[int, POSITIVE] | None = None,
                 gate_soft_cap: Annotated[float, POSITIVE] | None = 15.0, eps: Annotated[float, POSITIVE] = 1e-6,
                 norm_eps: Annotated[float, POSITIVE] = 1e-6, chunk_size: Annotated[int, POSITIVE] = 64):
        qk_dim, v_dim = qk_dim or d_model // 2, v_dim or d_model
        if qk_dim % n_heads or v_dim % n_heads:
            raise ValueError(f"mlstm_large: qk_dim={qk_dim} and v_dim={v_dim} must be divisible by n_heads={n_heads}")
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, head_dim=v_dim // n_heads)
        self.widths = (qk_dim, qk_dim, v_dim, v_dim)
        self.cap, self.eps, self.norm_eps, self.chunk_size = gate_soft_cap, eps, norm_eps, chunk_size
        self.qkvo = Linear(d_model, sum(self.widths), bias=False)
        self.gates = Linear(d_model, 2 * n_heads)  # [input | forget]
        with torch.no_grad():
            self.gates.weight.zero_()
            self.gates.bias.copy_(torch.cat([torch.full((n_heads,), -10.0), torch.linspace(3.0, 6.0, n_heads)]))
        self.norm_weight = nn.Parameter(torch.ones(v_dim))
        self.out = Linear(v_dim, d_model, bias=False)

    def init_state(self, batch_size: int):
        C, n, m = op.init_state(batch_size, self.n_heads, self.widths[0] // self.n_heads, self.head_dim)
        return {"C": C.to(self.norm_weight), "n": n.to(self.norm_weight), "m": m.to(self.norm_weight)}

    def forward(self, x, state=None, shared=None):
        H, T = self.n_heads, x.shape[1]
        q, k, v, o = self.qkvo.parts(x, self.widths)
        gates = self.gates(x)
        if self.cap is not None:
            gates = self.cap * torch.tanh(gates / self.cap)
        log_i, f_pre = gates.transpose(1, 2).split(H, dim=1)  # [B, H, T] each
        log_f = F.logsigmoid(f_pre)
        q, k, v = split_heads(q, H), split_heads(k, H), split_heads(v, H)
        cell = None if state is None else (state["C"], state["n"], state["m"])
        scale = (self.widths[0] // H) ** -0.5
        if T == 1 and state is not None:
            h, cell = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_i[:, :, 0], log_f[:, :, 0], cell, scale, self.eps)
            h = h.unsqueeze(2)
        else:
            h, cell = op.chunked(q, k, v, log_i, log_f, cell, scale, self.eps, self.chunk_size)
        h = merge_heads(F.layer_norm(h, h.shape[-1:], eps=self.norm_eps)) * self.norm_weight
        y = self.out(torch.sigmoid(o) * h)
        return y, (None if state is None else dict(zip(("C", "n", "m"), cell)))
