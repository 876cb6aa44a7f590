"""DeltaNet (Yang et al. 2024) and Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025): the delta rule with
L2-normalised queries and keys, a short convolution with SiLU over q, k, v, and a gated RMSNorm on the output.
The chunked form is ``ops.delta_rule.gated_chunked`` (the rule's own structure); the step is the general rule's
(see ``ops.delta_rule`` for how α, β and k map onto it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.layers import GatedRMSNorm, Linear, ShortConv, cached
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.mixers.mamba import inverse_softplus_dt
from seqmix.ops import delta_rule as op


@register_mixer("gated_deltanet")
class GatedDeltaNet(Mixer):
    """S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = S_t q_t / √d_k  (per head; with ``gate=False``
    α_t = 1: DeltaNet).

    q, k, v = SiLU(conv(W_q x, W_k x, W_v x)); q, k L2-normalised per head; β_t = σ(W_β x_t) and, with the gate,
    α_t = exp(−exp(A_log) · softplus(W_α x_t + dt_bias)) per head (Mamba-2's decay, as in the paper and
    flash-linear-attention's layer); y = W_o · GatedRMSNorm_head(o, W_g x).

    Options: ``gate`` (the decay α; False = DeltaNet), ``expand_v`` (value head width = expand_v · d_k),
    ``d_conv`` (conv width; 0 = no conv), ``chunk_size`` (the chunked form's chunk, a power of two),
    ``norm_eps``. Init: A ~ U[1, 16] (flash-linear-attention draws U[0, 16]; the lower bound keeps log A
    finite), Δ log-uniform in [1e-3, 1e-1] as in Mamba-2.
    State: {"conv": [B, d_conv−1, H(2 d_k + d_v)] (if d_conv), "S": [B, H, d_k, d_v]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1, gate: bool = True,
                 expand_v: float = 1, d_conv: int = 4, chunk_size: int = 32, norm_eps: float = 1e-5):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        name = self.registered_name
        if not isinstance(gate, bool):
            raise ValueError(f"{name} option gate={gate!r}: must be True or False")
        if not isinstance(d_conv, int) or isinstance(d_conv, bool) or d_conv < 0:
            raise ValueError(f"{name} option d_conv={d_conv!r}: must be a non-negative integer (0 = no conv)")
        if (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
                or chunk_size & (chunk_size - 1)):
            raise ValueError(f"{name} option chunk_size={chunk_size!r}: must be a power of two")
        dv = expand_v * self.head_dim if isinstance(expand_v, (int, float)) and not isinstance(expand_v, bool) else 0
        if not dv >= 1 or dv != int(dv):
            raise ValueError(f"{name} option expand_v={expand_v!r}: expand_v · head_dim ({self.head_dim}) must be a "
                             "positive integer")
        if not isinstance(norm_eps, (int, float)) or isinstance(norm_eps, bool) or not norm_eps > 0:
            raise ValueError(f"{name} option norm_eps={norm_eps!r}: must be a positive number")
        H, dk, dv = n_heads, self.head_dim, int(dv)
        self.gate, self.dk, self.dv, self.chunk_size = gate, dk, dv, chunk_size
        self.q, self.k, self.v = Linear(d_model, H * dk, bias=False), Linear(d_model, H * dk, bias=False), \
            Linear(d_model, H * dv, bias=False)
        self.conv = ShortConv(H * (2 * dk + dv), d_conv, bias=False) if d_conv else None
        self.beta = Linear(d_model, H, bias=False)
        if gate:
            self.alpha = Linear(d_model, H, bias=False)
            self.A_log = torch.nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
            self.dt_bias = torch.nn.Parameter(inverse_softplus_dt(H, 1e-3, 1e-1, floor=1e-4))
        self.out_gate = Linear(d_model, H * dv, bias=False)
        self.norm = GatedRMSNorm(H * dv, group_size=dv, eps=norm_eps)
        self.out = Linear(H * dv, d_model, bias=False)

    def init_state(self, batch_size: int):
        state = {"S": self._zeros(batch_size, self.n_heads, self.dk, self.dv)}
        if self.conv is not None:
            state["conv"] = self.conv.init_state(batch_size)
        return state

    def forward(self, x, state=None, shared=None):
        H, T = self.n_heads, x.shape[1]
        q, k, v = self.q(x), self.k(x), self.v(x)
        new_state = {}
        if self.conv is not None:  # one convolution over the three projections side by side
            qkv, new_state["conv"] = self.conv(torch.cat([q, k, v], dim=-1), None if state is None else state["conv"])
            q, k, v = F.silu(qkv).split([H * self.dk, H * self.dk, H * self.dv], dim=-1)
        q, k, v = F.normalize(split_heads(q, H), dim=-1), F.normalize(split_heads(k, H), dim=-1), split_heads(v, H)
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)  # [B, H, T]
        log_alpha = None
        if self.gate:  # log α = −exp(A_log) · softplus(W_α x + dt_bias), a per-head decay in (0, 1]
            A = cached(self, "A", (self.A_log,), lambda: -torch.exp(self.A_log))
            log_alpha = (A * F.softplus(self.alpha(x) + self.dt_bias)).transpose(1, 2)
        S = None if state is None else state["S"]
        scale = self.dk ** -0.5
        if T == 1 and state is not None:  # the general rule's step: a = −k, b = α β k (b carries the decay)
            q1, k1, beta1 = q[:, :, 0], k[:, :, 0], beta[:, :, 0, None]
            alpha1 = None if log_alpha is None else log_alpha[:, :, 0]
            b1 = k1 * beta1 if alpha1 is None else k1 * (alpha1.exp()[..., None] * beta1)
            o, S = op.step(q1, k1, v[:, :, 0] * beta1, -k1, b1, alpha1, S, scale)
            o = o[:, :, None]
        else:
            o, S = op.gated_chunked(q, k, v, beta, log_alpha, S, scale, self.chunk_size)
        new_state["S"] = S
        y = self.out(self.norm(merge_heads(o), self.out_gate(x)))
        return y, (None if state is None else new_state)


@register_mixer("deltanet")
class DeltaNet(GatedDeltaNet):
    """DeltaNet: ``gated_deltanet`` without the decay, S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ."""

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1, expand_v: float = 1,
                 d_conv: int = 4, chunk_size: int = 32, norm_eps: float = 1e-5):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, gate=False, expand_v=expand_v,
                         d_conv=d_conv, chunk_size=chunk_size, norm_eps=norm_eps)
