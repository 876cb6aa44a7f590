"""Multi-head causal softmax attention with RoPE, a KV cache, an optional sliding window, and the settings
production models use: grouped-query heads, an explicit head width, QK-norm, partial or no rotary embedding,
an output gate (Qwen3-Next's) and projection biases."""
from __future__ import annotations

import torch

from seqmix.layers import Linear, RMSNorm, apply_rope
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import attention as op
from seqmix.registry import POSITIVE, Annotated, Literal, Rule

FRACTION = Rule("in (0, 1]", lambda v: 0 < v <= 1)


@register_mixer("attention")
class Attention(Mixer):
    """q, k, v projections -> [QK-norm] -> RoPE -> softmax attention (ops.attention) -> [· σ(W_g x)] -> W_o.

    Options: ``window`` (None = full causal; an int = sliding window with a rolling cache), ``rope`` (bool),
    ``rope_theta``, ``rope_fraction`` (RoPE on the first fraction of each head's channels, the rest pass
    through: partial rotary), ``n_kv_heads`` (grouped-query attention: n_heads / n_kv_heads query heads share
    each key/value head; None = n_heads), ``head_dim`` (None = d_model / n_heads), ``qk_norm`` (RMSNorm of q and
    k before RoPE, with ``norm_eps``: "head" over each head's channels (Qwen3), "all" over all heads' channels
    at once (OLMo-2); "none"), ``output_gate`` (o ← o ⊙ σ(W_g x) before the
    output projection), ``bias`` (biases on the four projections), ``chunk_size`` (query block size when
    continuing from a cache). One fused projection computes q, k, v (and the gate).
    State: {"k", "v": [B, n_kv_heads, S, head_dim] cache, "pos": [B] tokens seen so far}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 window: Annotated[int, POSITIVE] | None = None, rope: bool = True,
                 rope_theta: Annotated[float, POSITIVE] = 10000.0, rope_fraction: Annotated[float, FRACTION] = 1.0,
                 n_kv_heads: Annotated[int, POSITIVE] | None = None, head_dim: Annotated[int, POSITIVE] | None = None,
                 qk_norm: Literal["none", "head", "all"] = "none", norm_eps: Annotated[float, POSITIVE] = 1e-6, output_gate: bool = False,
                 bias: bool = False, chunk_size: Annotated[int, POSITIVE] = 256):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers, head_dim=head_dim)
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % self.n_kv_heads:
            raise ValueError(f"attention option n_kv_heads={n_kv_heads}: must divide n_heads={n_heads}")
        self.rope_dims = int(self.head_dim * rope_fraction) if rope else 0
        if rope and (self.rope_dims < 2 or self.rope_dims % 2):
            raise ValueError(f"attention option rope_fraction={rope_fraction}: head_dim {self.head_dim} × fraction "
                             f"= {self.rope_dims} rotated channels; RoPE needs an even number ≥ 2")
        self.window, self.rope_theta, self.chunk_size, self.output_gate = window, rope_theta, chunk_size, output_gate
        q_width, kv_width = n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.widths = (q_width, kv_width, kv_width) + ((q_width,) if output_gate else ())
        self.qkv = Linear(d_model, sum(self.widths), bias=bias)
        self.qk_norm = qk_norm
        if qk_norm != "none":  # over each head's channels, or over all heads' at once (OLMo-2)
            self.q_norm = RMSNorm(self.head_dim if qk_norm == "head" else q_width, norm_eps)
            self.k_norm = RMSNorm(self.head_dim if qk_norm == "head" else kv_width, norm_eps)
        self.out = Linear(q_width, d_model, bias=bias)

    def init_state(self, batch_size: int):
        empty = self._zeros(batch_size, self.n_kv_heads, 0, self.head_dim)
        pos = torch.zeros(batch_size, dtype=torch.long, device=empty.device)
        return {"k": empty, "v": empty.clone(), "pos": pos}

    def _rotate(self, q, k, positions):
        r = self.rope_dims
        if r == self.head_dim:
            return apply_rope((q, k), positions, self.rope_theta)
        q_rot, k_rot = apply_rope((q[..., :r], k[..., :r]), positions, self.rope_theta)
        return torch.cat([q_rot, q[..., r:]], -1), torch.cat([k_rot, k[..., r:]], -1)

    def forward(self, x, state=None, shared=None):
        T = x.shape[1]
        parts = self.qkv.parts(x, self.widths)
        q, k, v = parts[:3]
        if self.qk_norm == "all":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = split_heads(q, self.n_heads), split_heads(k, self.n_kv_heads), split_heads(v, self.n_kv_heads)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_dims:
            start = 0 if state is None else state["pos"][:, None]
            q, k = self._rotate(q, k, torch.arange(T, device=x.device) + start)
        if state is None:
            # full causal: one SDPA call; a window: query blocks against a rolling cache, so memory is
            # O(chunk · (chunk + window)) rather than a T × T mask
            if self.window is None:
                o, _ = op.parallel(q, k, v)
            else:
                o, _ = op.chunked(q, k, v, window=self.window, chunk_size=self.chunk_size)
            new_state = None
        else:
            cache = (state["k"], state["v"])
            if T == 1:
                o, (kc, vc) = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], cache, self.window)
                o = o[:, :, None]
            else:
                o, (kc, vc) = op.chunked(q, k, v, cache, self.window, chunk_size=self.chunk_size)
            new_state = {"k": kc, "v": vc, "pos": state["pos"] + T}
        o = merge_heads(o)
        if self.output_gate:
            o = o * torch.sigmoid(parts[3])
        return self.out(o), new_state
