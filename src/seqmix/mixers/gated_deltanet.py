"""DeltaNet (Yang et al. 2024) and Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025): the delta rule with
L2-normalised queries and keys, a short convolution with SiLU over q, k, v, and a gated RMSNorm on the output.
The chunked form is ``ops.delta_rule.gated_chunked`` (the rule's own structure); the step is the general rule's
(see ``ops.delta_rule`` for how α, β and k map onto it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.layers import GatedRMSNorm, Linear, ShortConv, cached, side_by_side
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.mixers.mamba import inverse_softplus_dt
from seqmix.ops import delta_rule as op
from seqmix.registry import NON_NEGATIVE, POSITIVE, POWER_OF_TWO, Annotated


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(Σ x² + eps) over the last dimension: flash-linear-attention's (and transformers') form, which
    Gated DeltaNet checkpoints were trained with (F.normalize divides by max(‖x‖, eps) instead)."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


@register_mixer("gated_deltanet")
class GatedDeltaNet(Mixer):
    """S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = S_t q_t / √d_k  (per head; with ``gate=False``
    α_t = 1: DeltaNet).

    q, k, v = SiLU(conv(W_q x, W_k x, W_v x)); q, k L2-normalised per head; β_t = σ(W_β x_t) and, with the gate,
    α_t = exp(−exp(A_log) · softplus(W_α x_t + dt_bias)) per head (Mamba-2's decay, as in the paper and
    flash-linear-attention's layer); y = W_o · GatedRMSNorm_head(o, W_g x).

    Heads: ``n_heads`` value heads, each with its own β, α, state and output; ``n_k_heads`` query/key heads
    (None = n_heads), each serving n_heads / n_k_heads consecutive value heads (Qwen3-Next's grouped layout).
    Options: ``gate`` (the decay α; False = DeltaNet), ``head_dim_k`` (None = d_model / n_heads),
    ``head_dim_v`` (None = head_dim_k), ``d_conv`` (conv width; 0 = no conv), ``chunk_size`` (the chunked
    form's chunk, a power of two), ``norm_eps``, ``allow_neg_eigval`` (β = 2σ(W_β x) ∈ (0, 2): the transition
    I − β k kᵀ may then have a negative eigenvalue, which helps state tracking; Grazzi et al. 2025, OLMo-Hybrid),
    ``piece`` (outside autograd a longer sequence runs ``piece`` tokens at a time through the carried state: same
    result, and the intermediates stay [B, piece, ·], in cache, instead of being allocated at the full length).
    Init: A ~ U[1, 16] (flash-linear-attention draws U[0, 16]; the lower bound keeps log A finite), Δ log-uniform
    in [1e-3, 1e-1] as in Mamba-2.
    State: {"conv": [B, d_conv−1, H_k(2 d_k) + H d_v] (if d_conv), "S": [B, H, d_k, d_v]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1, gate: bool = True,
                 n_k_heads: Annotated[int, POSITIVE] | None = None,
                 head_dim_k: Annotated[int, POSITIVE] | None = None,
                 head_dim_v: Annotated[int, POSITIVE] | None = None, d_conv: Annotated[int, NON_NEGATIVE] = 4,
                 chunk_size: Annotated[int, POWER_OF_TWO] = 32, norm_eps: Annotated[float, POSITIVE] = 1e-5,
                 allow_neg_eigval: bool = False, piece: Annotated[int, POSITIVE] = 1024):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, head_dim=head_dim_k)
        self.piece = piece
        self.beta_scale = 2.0 if allow_neg_eigval else 1.0
        Hk = n_heads if n_k_heads is None else n_k_heads
        if n_heads % Hk:
            raise ValueError(f"{self.registered_name} option n_k_heads={n_k_heads}: must divide n_heads={n_heads}")
        H, dk = n_heads, self.head_dim
        dv = head_dim_v or dk
        self.gate, self.n_k_heads, self.dk, self.dv, self.chunk_size = gate, Hk, dk, dv, chunk_size
        self.q, self.k, self.v = Linear(d_model, Hk * dk, bias=False), Linear(d_model, Hk * dk, bias=False), \
            Linear(d_model, H * dv, bias=False)
        self.conv = ShortConv(Hk * 2 * dk + H * dv, d_conv, bias=False) if d_conv else None
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

    def _forward(self, x, state):
        H, Hk, T = self.n_heads, self.n_k_heads, x.shape[1]
        new_state = {}
        if self.conv is not None:  # one convolution over the three projections side by side
            qkv, new_state["conv"] = self.conv(side_by_side(self, "qkv", (self.q, self.k, self.v), x),
                                               None if state is None else state["conv"])
            # nothing recorded: the activation overwrites the convolution's fresh output
            qkv = F.silu(qkv, inplace=not torch.is_grad_enabled())
            q, k, v = qkv.split([Hk * self.dk, Hk * self.dk, H * self.dv], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = l2_normalize(split_heads(q, Hk)), l2_normalize(split_heads(k, Hk)), split_heads(v, H)
        # the output gate, β and α in one product (β and α alone are too narrow for an efficient one)
        gate, beta, *alpha = side_by_side(self, "gate_beta_alpha", (self.out_gate, self.beta) + (
            (self.alpha,) if self.gate else ()), x).split([H * self.dv, H, H][:3 if self.gate else 2], dim=-1)
        beta = (torch.sigmoid(beta) * self.beta_scale).transpose(1, 2)  # [B, H, T]
        log_alpha = None
        if self.gate:  # log α = −exp(A_log) · softplus(W_α x + dt_bias), a per-head decay in (0, 1]
            A = cached(self, "A", (self.A_log,), lambda: -torch.exp(self.A_log))
            log_alpha = (A * F.softplus(alpha[0] + self.dt_bias)).transpose(1, 2)
        S = None if state is None else state["S"]
        scale = self.dk ** -0.5
        if T == 1 and state is not None:  # the general rule's step: a = −k, b = α β k (b carries the decay)
            # each query/key head serves H / Hk consecutive value heads (the chunked form groups them itself)
            q1, k1 = (x[:, :, 0].repeat_interleave(H // Hk, dim=1) for x in (q, k))
            beta1 = beta[:, :, 0, None]
            alpha1 = None if log_alpha is None else log_alpha[:, :, 0]
            b1 = k1 * beta1 if alpha1 is None else k1 * (alpha1.exp()[..., None] * beta1)
            o, S = op.step(q1, k1, v[:, :, 0] * beta1, -k1, b1, alpha1, S, scale)
            o = o[:, :, None]
        else:
            o, S = op.gated_chunked(q, k, v, beta, log_alpha, S, scale, self.chunk_size)
        new_state["S"] = S
        y = self.out(self.norm(merge_heads(o), gate))
        return y, new_state


@register_mixer("deltanet")
class DeltaNet(GatedDeltaNet):
    """DeltaNet: ``gated_deltanet`` without the decay, S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ."""

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 n_k_heads: Annotated[int, POSITIVE] | None = None,
                 head_dim_k: Annotated[int, POSITIVE] | None = None,
                 head_dim_v: Annotated[int, POSITIVE] | None = None, d_conv: Annotated[int, NON_NEGATIVE] = 4,
                 chunk_size: Annotated[int, POWER_OF_TWO] = 32, norm_eps: Annotated[float, POSITIVE] = 1e-5,
                 allow_neg_eigval: bool = False, piece: Annotated[int, POSITIVE] = 1024):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, gate=False, n_k_heads=n_k_heads,
                         head_dim_k=head_dim_k, head_dim_v=head_dim_v, d_conv=d_conv, chunk_size=chunk_size,
                         norm_eps=norm_eps, allow_neg_eigval=allow_neg_eigval, piece=piece)
