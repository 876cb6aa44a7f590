"""LFM2's gated short-convolution block (Liquid AI 2025): input-dependent gates around a causal depthwise conv."""
from __future__ import annotations

from seqmix.layers import Linear, ShortConv
from seqmix.mixers.base import Mixer, register_mixer
from seqmix.registry import POSITIVE, Annotated


@register_mixer("short_conv")
class GatedShortConv(Mixer):
    """[b, c, u] = W_in x (three d_model-wide parts);  y = W_out (c ⊙ conv(b ⊙ u)),

    conv the causal depthwise convolution of kernel ``d_conv`` over time (y_t = Σ_{j<K} w_j ⊙ z_{t−K+1+j}).
    As transformers' ``Lfm2ShortConv``. Heads play no part. Options: ``d_conv`` (LFM2's ``conv_L_cache``),
    ``bias`` (on the projections and the conv, LFM2's ``conv_bias``).
    State: {"conv": [B, d_conv − 1, d_model]}, the last gated inputs b ⊙ u.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 d_conv: Annotated[int, POSITIVE] = 3, bias: bool = False):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        self.in_proj = Linear(d_model, 3 * d_model, bias=bias)
        self.conv = ShortConv(d_model, d_conv, bias=bias)
        self.out = Linear(d_model, d_model, bias=bias)

    def init_state(self, batch_size: int):
        return {"conv": self.conv.init_state(batch_size)}

    def forward(self, x, state=None, shared=None):
        b, c, u = self.in_proj(x).chunk(3, dim=-1)
        z, tail = self.conv(b * u, None if state is None else state["conv"])
        y = self.out(c * z)
        return y, (None if state is None else {"conv": tail})
