"""Kimi Delta Attention (Kimi Team 2025, Kimi Linear): the gated delta rule with a per-channel decay."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.layers import GatedRMSNorm, Linear, ShortConv, cached
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.mixers.gated_deltanet import l2_normalize
from seqmix.mixers.mamba import inverse_softplus_dt
from seqmix.ops import delta_rule as op
from seqmix.registry import NON_NEGATIVE, POSITIVE, POWER_OF_TWO, Annotated


@register_mixer("kda")
class KimiDeltaAttention(Mixer):
    """S_t = (I − β_t k_t k_tᵀ) diag(α_t) S_{t−1} + β_t k_t v_tᵀ,  o_t = S_tᵀ q_t / √d  (S [d, d] per head).

    q, k, v = SiLU(conv(W_q x, W_k x, W_v x)), q and k L2-normalised per head; β_t = σ(W_β x_t) per head;
    log α_t = −exp(A_log_h) · softplus(W_f↑ W_f↓ x_t + dt_bias), one decay per head and key channel (the
    per-channel refinement of Gated DeltaNet's per-head α); y = W_o · RMSNorm_head(o) ⊙ σ(W_g↑ W_g↓ x) (a sigmoid
    output gate, low rank like the decay's projection). As transformers' ``KimiLinearDeltaAttention``.
    Through ``ops.delta_rule`` with log_w = log α, a = −α ⊙ k, b = β k and v ← β v.

    Options: ``head_dim`` (None = d_model / n_heads; keys and values share it), ``gate_rank`` (rank of the
    decay and output-gate projections; None = head_dim), ``d_conv`` (0 = no conv), ``chunk_size`` (a power of
    two), ``norm_eps``. Init: A ~ U[1, 16], Δ log-uniform in [1e-3, 1e-1] per channel.
    State: {"conv": [B, d_conv−1, 3 H d] (if d_conv), "S": [B, H, d, d]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 head_dim: Annotated[int, POSITIVE] | None = None, gate_rank: Annotated[int, POSITIVE] | None = None,
                 d_conv: Annotated[int, NON_NEGATIVE] = 4, chunk_size: Annotated[int, POWER_OF_TWO] = 32,
                 norm_eps: Annotated[float, POSITIVE] = 1e-5):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, head_dim=head_dim)
        H, d = n_heads, self.head_dim
        rank = gate_rank or d
        self.chunk_size = chunk_size
        self.q, self.k, self.v = (Linear(d_model, H * d, bias=False) for _ in range(3))
        self.conv = ShortConv(3 * H * d, d_conv, bias=False) if d_conv else None
        self.decay_down, self.decay_up = Linear(d_model, rank, bias=False), Linear(rank, H * d, bias=False)
        self.dt_bias = torch.nn.Parameter(inverse_softplus_dt(H * d, 1e-3, 1e-1, floor=1e-4))
        self.A_log = torch.nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.beta = Linear(d_model, H, bias=False)
        self.gate_down, self.gate_up = Linear(d_model, rank, bias=False), Linear(rank, H * d, bias=False)
        self.norm = GatedRMSNorm(H * d, group_size=d, eps=norm_eps, activation="sigmoid")
        self.out = Linear(H * d, d_model, bias=False)

    def init_state(self, batch_size: int):
        d = self.head_dim
        state = {"S": self._zeros(batch_size, self.n_heads, d, d)}
        if self.conv is not None:
            state["conv"] = self.conv.init_state(batch_size)
        return state

    def forward(self, x, state=None, shared=None):
        H, T = self.n_heads, x.shape[1]
        q, k, v = self.q(x), self.k(x), self.v(x)
        new_state = {}
        if self.conv is not None:
            qkv, new_state["conv"] = self.conv(torch.cat([q, k, v], dim=-1), None if state is None else state["conv"])
            q, k, v = F.silu(qkv).chunk(3, dim=-1)
        q, k, v = l2_normalize(split_heads(q, H)), l2_normalize(split_heads(k, H)), split_heads(v, H)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)[..., None]  # [B, H, T, 1]
        A = cached(self, "A", (self.A_log,), lambda: -torch.exp(self.A_log)[:, None, None])  # [H, 1, 1]
        log_alpha = A * split_heads(F.softplus(self.decay_up(self.decay_down(x)) + self.dt_bias), H)  # [B, H, T, d]
        a, b, v = -log_alpha.exp() * k, beta * k, beta * v
        S = None if state is None else state["S"]
        scale = self.head_dim ** -0.5
        if T == 1 and state is not None:
            o, S = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], a[:, :, 0], b[:, :, 0], log_alpha[:, :, 0], S, scale)
            o = o[:, :, None]
        else:
            o, S = op.chunked(q, k, v, a, b, log_alpha, S, scale, self.chunk_size)
        new_state["S"] = S
        y = self.out(self.norm(merge_heads(o), self.gate_up(self.gate_down(x))))
        return y, (None if state is None else new_state)
