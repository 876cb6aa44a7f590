"""RWKV-6 "Finch" time-mix (Peng et al. 2024, "Eagle and Finch", §4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import Linear, token_shift
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import rwkv6 as op
from seqmix.registry import POSITIVE, Annotated


def rwkv_head_layout(d_model: int, n_heads: int, head_size: int) -> tuple[int, int]:
    """(heads, head size) for RWKV-5/6/7: ``head_size`` channels per head (RWKV's 64) when it divides
    d_model; otherwise (small models) the model's own split d_model // n_heads."""
    if d_model % head_size == 0:
        return d_model // head_size, head_size
    return n_heads, d_model // n_heads


class RWKVMatrixMixer(Mixer):
    """What RWKV-6 and RWKV-7 share: heads of ``head_size`` channels (`rwkv_head_layout`), a ``chunk_size``
    for the chunked op, bias-free C×C projections with a GroupNorm per head on the output (`_projections`),
    and the state {"shift": [B, C] last input, "S": [B, H, N, N]}. Subclasses declare (and so validate) the
    options."""

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int, n_layers: int, head_size: int,
                 chunk_size: int):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        self.H, self.N = rwkv_head_layout(d_model, n_heads, head_size)
        self.chunk_size = chunk_size

    def _projections(self, *names: str) -> None:
        """One Linear(C, C, bias=False) per name, in order, then ``ln_x`` (GroupNorm eps 64e-5 = 1e-5·8²,
        the official head_size_divisor 8)."""
        C = self.d_model
        for name in names:
            setattr(self, name, Linear(C, C, bias=False))
        self.ln_x = nn.GroupNorm(self.H, C, eps=64e-5)

    def init_state(self, batch_size: int):
        return {"shift": self._zeros(batch_size, self.d_model), "S": self._zeros(batch_size, self.H, self.N, self.N)}


@register_mixer("rwkv6")
class RWKV6(RWKVMatrixMixer):
    """Data-dependent token shift and decay, a matrix state per head (ops.rwkv6), GroupNorm, SiLU gate.

    xx = x_{t-1} - x;  (μ_w, μ_k, μ_v, μ_r, μ_g) += tanh((x + xx·μ_x) A) B   (low rank, ``mix_rank``)
    x_* = x + xx·μ_*;  r, k, v = W_r x_r, W_k x_k, W_v x_v;  g = silu(W_g x_g)
    w_t = exp(-exp(d + tanh(x_w D_1) D_2))   (data-dependent decay, low rank ``decay_rank``)
    o = WKV6(r, k, v, w, u);  y = W_o(GroupNorm_per_head(o) ⊙ g)

    Heads of ``head_size`` channels (64, RWKV's; the model's d_model // n_heads when 64 does not divide
    d_model). Initialisation follows the official x060 code (μ ramps over channels and depth, decay spread
    -6..-1, zigzag bonus u, zero first low-rank factors so the data-dependent parts start at zero);
    Linear layers use PyTorch's default init. GroupNorm eps 64e-5 = 1e-5·8² (the official
    head_size_divisor 8). Options: ``head_size``, ``mix_rank`` (32), ``decay_rank`` (64), ``chunk_size``.
    State: {"shift": [B, C] last input, "S": [B, H, N, N]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 head_size: Annotated[int, POSITIVE] = 64, mix_rank: Annotated[int, POSITIVE] = 32,
                 decay_rank: Annotated[int, POSITIVE] = 64, chunk_size: Annotated[int, POSITIVE] = 32):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, head_size=head_size,
                         chunk_size=chunk_size)
        C = d_model
        ratio_0_to_1 = layer_idx / (n_layers - 1) if n_layers > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - layer_idx / n_layers
        ramp = torch.arange(C, dtype=torch.float32) / C
        self.maa_x = nn.Parameter(1 - ramp ** ratio_1_to_almost0)
        self.maa_wkvrg = nn.Parameter(torch.stack([  # the static part of μ_w, μ_k, μ_v, μ_r, μ_g
            1 - ramp ** ratio_1_to_almost0,
            1 - ramp ** ratio_1_to_almost0,
            1 - (ramp ** ratio_1_to_almost0 + 0.3 * ratio_0_to_1),
            1 - ramp ** (0.5 * ratio_1_to_almost0),
            1 - ramp ** (0.5 * ratio_1_to_almost0)]))
        self.maa_w1 = nn.Parameter(torch.zeros(C, 5 * mix_rank))
        self.maa_w2 = nn.Parameter(torch.empty(5, mix_rank, C).uniform_(-0.01, 0.01))
        n = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)
        self.time_decay = nn.Parameter(-6 + 5 * n ** (0.7 + 1.3 * ratio_0_to_1))
        self.decay_w1 = nn.Parameter(torch.zeros(C, decay_rank))
        self.decay_w2 = nn.Parameter(torch.empty(decay_rank, C).uniform_(-0.01, 0.01))
        zigzag = ((torch.arange(C) + 1) % 3 - 1) * 0.1
        self.time_first = nn.Parameter((ratio_0_to_1 * (1 - n) + zigzag).view(self.H, self.N))
        self._projections("receptance", "key", "value", "gate", "output")

    def forward(self, x, state=None, shared=None):
        B, T, C = x.shape
        x_prev, last = token_shift(x, None if state is None else state["shift"])
        xx = x_prev - x
        low = torch.tanh((x + xx * self.maa_x) @ self.maa_w1).view(B, T, 5, -1)
        mix = self.maa_wkvrg + torch.einsum("btfr,frc->btfc", low, self.maa_w2)  # [B, T, 5, C]
        xw, xk, xv, xr, xg = (x.unsqueeze(2) + xx.unsqueeze(2) * mix).unbind(2)
        r, k, v = (split_heads(p(z), self.H) for p, z in ((self.receptance, xr), (self.key, xk), (self.value, xv)))
        g = F.silu(self.gate(xg))
        log_w = -(self.time_decay + torch.tanh(xw @ self.decay_w1) @ self.decay_w2).exp()
        log_w = split_heads(log_w, self.H)
        S = None if state is None else state["S"]
        if T == 1 and state is not None:
            o, S = op.step(r[:, :, 0], k[:, :, 0], v[:, :, 0], log_w[:, :, 0], self.time_first, S)
            o = o.unsqueeze(2)
        else:
            o, S = op.chunked(r, k, v, log_w, self.time_first, S, chunk_size=self.chunk_size)
        o = self.ln_x(merge_heads(o).reshape(B * T, C)).view(B, T, C)
        y = self.output(o * g)
        return y, (None if state is None else {"shift": last, "S": S})
