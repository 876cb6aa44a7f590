"""Lightning attention (Qin et al. 2024; MiniMax-01's linear layers): linear attention with a fixed per-head decay,
an RMSNorm over all heads and a sigmoid output gate."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.layers import Linear, RMSNorm
from seqmix.mixers.base import Mixer, merge_heads, register_mixer
from seqmix.ops import gated_linear_attention as op
from seqmix.registry import POSITIVE, Annotated


def minimax_slopes(n_heads: int, layer_idx: int, n_layers: int) -> torch.Tensor:
    """MiniMax-01's decay rates s_h = 2^{−8(h+1)/H} · (1 − i / (L − 1 + 1e−5) + 1e−5) for layer i of L: ALiBi's
    geometric slopes, weaker in deeper layers (its transformers model computes them the same way)."""
    base = 1 / (2 ** (8 / n_heads))
    return base ** (torch.arange(n_heads) + 1) * (1 - layer_idx / (n_layers - 1 + 1e-5) + 1e-5)


@register_mixer("lightning")
class LightningAttention(Mixer):
    """S_t = e^{−s_h} S_{t−1} + k_t v_tᵀ, o_t = S_tᵀ q_t (no scaling, no normaliser) with q, k, v = SiLU(W x);
    y = W_o (RMSNorm(o) ⊙ σ(W_g x)), the norm over all heads' channels at once. The decay rates s_h are fixed
    (a buffer, ``minimax_slopes``), not learned. As transformers' ``MiniMaxLightningAttention``, whose blockwise
    prefill and per-token decode compute this recurrence.

    Options: ``head_dim`` (None = d_model / n_heads), ``norm_eps`` (transformers' default 1e-6),
    ``chunk_size``, ``piece`` (outside autograd a longer sequence runs ``piece`` tokens at a time, see
    ``Mixer._in_pieces``). State: {"S": [B, H, head_dim, head_dim]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 head_dim: Annotated[int, POSITIVE] | None = None, norm_eps: Annotated[float, POSITIVE] = 1e-6,
                 chunk_size: Annotated[int, POSITIVE] = 64, piece: Annotated[int, POSITIVE] = 1024):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, head_dim=head_dim)
        width = n_heads * self.head_dim
        self.chunk_size, self.piece = chunk_size, piece
        self.qkv = Linear(d_model, 3 * width, bias=False)
        self.register_buffer("slopes", minimax_slopes(n_heads, layer_idx, n_layers))
        self.norm = RMSNorm(width, norm_eps)
        self.gate = Linear(d_model, width, bias=False)
        self.out = Linear(width, d_model, bias=False)

    def init_state(self, batch_size: int):
        return {"S": self._zeros(batch_size, self.n_heads, self.head_dim, self.head_dim)}

    def _forward(self, x, state):
        B, T, _ = x.shape
        qkv = F.silu(self.qkv(x)).view(B, T, self.n_heads, 3 * self.head_dim)  # per head [q_h, k_h, v_h]
        q, k, v = qkv.transpose(1, 2).split(self.head_dim, dim=-1)
        log_decay = (-self.slopes.to(x.dtype))[None, :, None].expand(B, -1, T)
        S = None if state is None else state["S"]
        if T == 1 and state is not None:
            o, S = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_decay[:, :, 0], S)
            o = o[:, :, None]
        else:
            o, S = op.chunked(q, k, v, log_decay, S, 1.0, self.chunk_size)
        y = self.out(self.norm(merge_heads(o)) * torch.sigmoid(self.gate(x)))
        return y, {"S": S}
