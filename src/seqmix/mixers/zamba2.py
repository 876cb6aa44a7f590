"""Zamba-2's hybrid layer (Glorioso et al. 2024): a transformer block that reads the residual stream and the
token embeddings side by side, whose output joins the input of the Mamba-2 layer after it."""
from __future__ import annotations

import torch

from seqmix.ffn.swiglu import SwiGLU
from seqmix.layers import Linear, RMSNorm
from seqmix.mixers.base import EMBEDDINGS, MIXERS, Mixer, register_mixer
from seqmix.registry import POSITIVE, Annotated, Literal


@register_mixer("zamba2_hybrid")
class Zamba2Hybrid(Mixer):
    """y = Mamba-2(norm(x + W_l · GLU(norm(attention(norm([x, e])))))), e the token embeddings; the block adds x.

    The attention reads 2·d_model channels ([x, e]) and projects back to d_model; then a gated MLP of width
    ``hidden`` (``activation`` "gelu" or "silu") with its own pre-norm and no residual, a d_model × d_model
    projection W_l, and the sum with x is the (normalised) input of the Mamba-2 mixer. The mixer reads x
    itself (``normalizes_input``) and the embeddings from the model (``shared[EMBEDDINGS]``).

    Options: ``attention`` (the attention mixer's options; ``n_heads`` among them sets its heads, whose width
    defaults to 2·d_model / heads), ``mamba2`` (the Mamba-2 mixer's options), ``hidden``, ``activation``,
    ``norm_eps`` (the three RMSNorms'). State: {"attention": ..., "mamba2": ...}.
    """

    normalizes_input = True

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 attention: dict | None = None, mamba2: dict | None = None,
                 hidden: Annotated[int, POSITIVE] | None = None, activation: Literal["gelu", "silu"] = "gelu",
                 norm_eps: Annotated[float, POSITIVE] = 1e-5):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        attention, mamba2 = dict(attention or {}), dict(mamba2 or {})
        self.attn_norm = RMSNorm(2 * d_model, norm_eps)
        self.attention = MIXERS.build("attention", 2 * d_model, attention.pop("n_heads", n_heads), options=attention,
                                      layer_idx=layer_idx, n_layers=n_layers)
        q_width = self.attention.out.in_features  # its output projection maps back to d_model
        self.attention.out = Linear(q_width, d_model, bias=self.attention.out.bias is not None)
        self.mlp_norm = RMSNorm(d_model, norm_eps)
        self.mlp = SwiGLU(d_model, hidden=hidden or 4 * d_model, activation=activation)
        self.linear = Linear(d_model, d_model, bias=False)
        self.mamba_norm = RMSNorm(d_model, norm_eps)
        self.mamba2 = MIXERS.build("mamba2", d_model, mamba2.pop("n_heads", n_heads), options=mamba2,
                                   layer_idx=layer_idx, n_layers=n_layers)

    def init_state(self, batch_size: int):
        return {"attention": self.attention.init_state(batch_size), "mamba2": self.mamba2.init_state(batch_size)}

    def forward(self, x, state=None, shared=None):
        if not shared or EMBEDDINGS not in shared:
            raise ValueError("zamba2_hybrid reads the token embeddings: run it inside a SeqMixLM")
        e = shared[EMBEDDINGS].to(x.dtype)
        a, attention_state = self.attention(self.attn_norm(torch.cat([x, e], dim=-1)),
                                            None if state is None else state["attention"], shared)
        t = self.linear(self.mlp(self.mlp_norm(a))[0])
        y, mamba_state = self.mamba2(self.mamba_norm(x + t), None if state is None else state["mamba2"], shared)
        return y, (None if state is None else {"attention": attention_state, "mamba2": mamba_state})
