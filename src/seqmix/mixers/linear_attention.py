"""Linear attention ("Transformers are RNNs"), with or without the normaliser."""
from __future__ import annotations

import torch.nn.functional as F

from seqmix.layers import GatedRMSNorm, Linear, ShortConv
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import linear_attention as op
from seqmix.registry import POSITIVE, Annotated, Literal

FEATURE_MAPS = {"elu1": lambda x: F.elu(x) + 1, "identity": lambda x: x}


@register_mixer("linear_attention")
class LinearAttention(Mixer):
    """q, k, v projections (optional short conv) -> φ(q), φ(k) -> ops.linear_attention -> output projection.

    Options: ``feature_map`` "elu1" (φ(x) = elu(x) + 1, the paper's) or "identity"; ``normalize`` (divide
    by φ(q)ᵀ z; without it a per-head RMSNorm normalises the output, the simplified form); ``short_conv``
    and ``conv_size``; ``chunk_size``. State: {"S": [B, H, D, D(+1)], "conv": [B, K-1, 3·d] if short_conv}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 feature_map: Literal["elu1", "identity"] = "elu1", normalize: bool = True, short_conv: bool = False,
                 conv_size: Annotated[int, POSITIVE] = 4, chunk_size: Annotated[int, POSITIVE] = 64):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        if normalize and feature_map == "identity":
            raise ValueError("linear_attention: normalize=True needs a positive feature map (feature_map='elu1'); "
                             "use normalize=False with feature_map='identity'")
        self.phi, self.normalize, self.chunk_size = FEATURE_MAPS[feature_map], normalize, chunk_size
        self.qkv = Linear(d_model, 3 * d_model, bias=False)
        self.conv = ShortConv(3 * d_model, conv_size) if short_conv else None
        self.norm = None if normalize else GatedRMSNorm(d_model, group_size=self.head_dim)
        self.out = Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int):
        state = {"S": self._zeros(batch_size, self.n_heads, self.head_dim, self.head_dim + int(self.normalize))}
        if self.conv is not None:
            state["conv"] = self.conv.init_state(batch_size)
        return state

    def forward(self, x, state=None, shared=None):
        h = self.qkv(x)
        new_state = {}
        if self.conv is not None:
            h, new_state["conv"] = self.conv(h, None if state is None else state["conv"])
        q, k, v = (split_heads(t, self.n_heads) for t in h.chunk(3, dim=-1))
        q, k = self.phi(q), self.phi(k)
        S = None if state is None else state["S"]
        if x.shape[1] == 1 and state is not None:
            o, S = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], S, self.normalize)
            o = o[:, :, None]
        else:
            o, S = op.chunked(q, k, v, S, self.normalize, chunk_size=self.chunk_size)
        o = merge_heads(o)
        if self.norm is not None:
            o = self.norm(o)
        new_state["S"] = S
        return self.out(o), (None if state is None else new_state)
