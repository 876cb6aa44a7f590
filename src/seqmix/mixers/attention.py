"""Multi-head causal softmax attention with RoPE, a KV cache and an optional sliding window."""
from __future__ import annotations

import torch

from seqmix.layers import Linear, apply_rope
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import attention as op


@register_mixer("attention")
class Attention(Mixer):
    """q, k, v projections -> RoPE -> softmax attention (ops.attention) -> output projection.

    Options: ``window`` (None = full causal; an int = sliding window with a rolling cache),
    ``rope`` (bool), ``rope_theta``, ``chunk_size`` (query block size when continuing from a cache).
    State: {"k", "v": [B, H, S, D] cache, "pos": [B] tokens seen so far}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 window: int | None = None, rope: bool = True, rope_theta: float = 10000.0, chunk_size: int = 256):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"attention option window={window!r}: must be a positive int or None")
        self.window, self.rope, self.rope_theta, self.chunk_size = window, rope, rope_theta, chunk_size
        self.qkv = Linear(d_model, 3 * d_model, bias=False)
        self.out = Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int):
        empty = self._zeros(batch_size, self.n_heads, 0, self.head_dim)
        pos = torch.zeros(batch_size, dtype=torch.long, device=empty.device)
        return {"k": empty, "v": empty.clone(), "pos": pos}

    def forward(self, x, state=None, shared=None):
        T = x.shape[1]
        q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        start = 0 if state is None else state["pos"][:, None]
        if self.rope:
            positions = torch.arange(T, device=x.device) + start
            q, k = apply_rope((q, k), positions, self.rope_theta)
        if state is None:
            # full causal: one SDPA call; a window: query blocks against a rolling cache, so memory is
            # O(chunk · (chunk + window)) rather than a T × T mask
            if self.window is None:
                o, _ = op.parallel(q, k, v)
            else:
                o, _ = op.chunked(q, k, v, window=self.window, chunk_size=self.chunk_size)
            return self.out(merge_heads(o)), None
        cache = (state["k"], state["v"])
        if T == 1:
            o, (kc, vc) = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], cache, self.window)
            o = o[:, :, None]
        else:
            o, (kc, vc) = op.chunked(q, k, v, cache, self.window, chunk_size=self.chunk_size)
        return self.out(merge_heads(o)), {"k": kc, "v": vc, "pos": state["pos"] + T}
