"""RWKV-7 "Goose" time-mix (Peng et al. 2025, "RWKV-7 Goose with Expressive Dynamic State Evolution", §4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import token_shift
from seqmix.mixers.base import merge_heads, register_mixer, split_heads
from seqmix.mixers.rwkv6 import RWKVMatrixMixer
from seqmix.ops import delta_rule as op
from seqmix.registry import POSITIVE, Annotated

V_FIRST = "rwkv7.v_first"  # key in the per-forward `shared` dict: the first RWKV-7 layer's values


def _lora_rank(C: int, factor: float, power: float) -> int:
    """The official low-rank widths: factor·C^power rounded to a multiple of 32, at least 32."""
    return max(32, int(round(factor * C ** power / 32) * 32))


class _LowRank(nn.Module):
    """x -> act(x A) B with A zero-initialised (the branch starts at zero) and B orthogonal × 0.1."""

    def __init__(self, C: int, rank: int, act=None):
        super().__init__()
        self.act = act
        self.A = nn.Parameter(torch.zeros(C, rank))
        self.B = nn.Parameter(nn.init.orthogonal_(torch.empty(rank, C), gain=0.1))

    def forward(self, x):
        h = x @ self.A
        return (h if self.act is None else self.act(h)) @ self.B


@register_mixer("rwkv7")
class RWKV7(RWKVMatrixMixer):
    """Generalised delta rule per head (ops.delta_rule) with RWKV-7's parametrisation.

    x_* = x + (x_{t-1} - x)·μ_*;  r, k, v = W_r x_r, W_k x_k, W_v x_v
    w_t = exp(-exp(-softplus(-(w_0 + tanh(x_w W_1) W_2)) - 0.5))     (decay in (e^{-e^{-0.5}}, 1))
    α_t = σ(a_0 + x_a A_1 A_2);  κ̂_t = normalize_per_head(k_t ⊙ k_k);  k_t ← k_t ⊙ (1 + (α_t - 1) ⊙ k_a)
    value residual: v_t ← v_t + (v_first_t - v_t) ⊙ σ(v_0 + x_v V_1 V_2) (v_first = the first layer's v)
    S_t = S_{t-1}(diag(w_t) - κ̂_t (α_t ⊙ κ̂_t)ᵀ) + v_t k_tᵀ,  o_t = S_t r_t
    y = W_o((GroupNorm_per_head(o) + (r_t · (k_t ⊙ r_k)) v_t) ⊙ σ(x_g G_1) G_2)

    The first RWKV-7 layer of a forward (none stored yet in ``shared``) stores its v; later ones mix it in
    (their value-residual weights exist only for layer_idx > 0). Heads of ``head_size`` channels (64;
    the model's own split when 64 does not divide d_model). Initialisation follows the official x070
    code (μ, w_0, k_k = 0.85, k_a = 1, v_0 = 1, low-rank widths); Linear layers use PyTorch's default init.
    Options: ``head_size``, ``chunk_size``. State: {"shift": [B, C] last input, "S": [B, H, N, N]
    (key × value layout of ops.delta_rule)}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 head_size: Annotated[int, POSITIVE] = 64, chunk_size: Annotated[int, POSITIVE] = 32):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, head_size=head_size,
                         chunk_size=chunk_size)
        C = d_model
        ratio_0_to_1 = layer_idx / (n_layers - 1) if n_layers > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - layer_idx / n_layers
        ramp = torch.arange(C, dtype=torch.float32) / C
        # token-shift mixes for r, w, k, v, a, g
        exponents = torch.tensor([0.2, 0.9, 0.7, 0.7, 0.9, 0.2])[:, None] * ratio_1_to_almost0
        self.mu = nn.Parameter(1 - ramp ** exponents)
        n = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)
        self.w0 = nn.Parameter(-7 + 5 * n ** (0.85 + ratio_0_to_1 ** 0.5) + 0.5)
        self.w_lora = _LowRank(C, _lora_rank(C, 1.8, 0.5), torch.tanh)
        self.a0 = nn.Parameter(torch.zeros(C))
        self.a_lora = _LowRank(C, _lora_rank(C, 1.8, 0.5))
        if layer_idx > 0:
            self.v0 = nn.Parameter(torch.ones(C))
            self.v_lora = _LowRank(C, _lora_rank(C, 1.3, 0.5))
        self.g_lora = _LowRank(C, _lora_rank(C, 0.6, 0.8), torch.sigmoid)
        self.k_k = nn.Parameter(torch.full((C,), 0.85))
        self.k_a = nn.Parameter(torch.ones(C))
        self.r_k = nn.Parameter(torch.zeros(self.H, self.N))
        self._projections("receptance", "key", "value", "output")

    def forward(self, x, state=None, shared=None):
        B, T, C = x.shape
        H = self.H
        x_prev, last = token_shift(x, None if state is None else state["shift"])
        xr, xw, xk, xv, xa, xg = (x.unsqueeze(-2) + (x_prev - x).unsqueeze(-2) * self.mu).unbind(-2)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        log_w = -(-F.softplus(-(self.w0 + self.w_lora(xw))) - 0.5).exp()
        shared = {} if shared is None else shared
        if V_FIRST not in shared:
            shared[V_FIRST] = v
        elif hasattr(self, "v0"):
            v = v + (shared[V_FIRST] - v) * torch.sigmoid(self.v0 + self.v_lora(xv))
        alpha = torch.sigmoid(self.a0 + self.a_lora(xa))
        kk = F.normalize(split_heads(k * self.k_k, H), dim=-1)
        k = k * (1 + (alpha - 1) * self.k_a)
        g = self.g_lora(xg)
        r, k, v, log_w, alpha = (split_heads(z, H) for z in (r, k, v, log_w, alpha))
        S = None if state is None else state["S"]
        if T == 1 and state is not None:
            o, S = op.step(r[:, :, 0], k[:, :, 0], v[:, :, 0], -kk[:, :, 0], (kk * alpha)[:, :, 0],
                           log_w[:, :, 0], S)
            o = o.unsqueeze(2)
        else:
            o, S = op.chunked(r, k, v, -kk, kk * alpha, log_w, S, chunk_size=self.chunk_size)
        o = self.ln_x(merge_heads(o).reshape(B * T, C)).view(B, T, C)
        bonus = (r * k * self.r_k.unsqueeze(1)).sum(dim=-1, keepdim=True) * v  # [B, H, T, N]
        y = self.output((o + merge_heads(bonus)) * g)
        return y, (None if state is None else {"shift": last, "S": S})
