"""Multi-head latent attention (DeepSeek-V2, 2024; Kimi Linear's attention layers): keys and values are expanded
from a small per-token latent, and the KV cache holds only that latent."""
from __future__ import annotations

import torch

from seqmix.layers import Linear, RMSNorm, apply_rope
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import attention as op
from seqmix.registry import POSITIVE, Annotated


@register_mixer("mla")
class LatentAttention(Mixer):
    """Softmax attention whose keys and values come from a compressed latent c_t = RMSNorm(W_c x_t) [kv_rank]:

        k_t^h = [W_k^h c_t ; k^R_t],   v_t^h = W_v^h c_t,   k^R_t = RoPE(W_R x_t) [rope_dim] shared by all heads
        q_t^h = [q^N ; RoPE(q^R)] = W_q x_t, or W_q RMSNorm(W_q↓ x_t) with a query latent of ``q_rank``
        o_t^h = softmax_s(q_t^h · k_s^h / √(nope_dim + rope_dim)) v_s^h,   y = W_o [o^1; …; o^H]

    The state is the cache of (c_t, k^R_t): kv_rank + rope_dim numbers per token, against 2 · H · head_dim for
    ordinary attention; every call expands the cached latents into keys and values. ``rope=False`` leaves both
    rotary parts unrotated (Kimi Linear's layers, which carry no positional encoding: its Kimi Delta Attention
    layers supply order). RoPE pairs channel i with i + rope_dim/2 (transformers' DeepSeek-V2 permutes
    interleaved pairs first; a converter of those weights would reorder them).

    Options: ``kv_rank`` (None = 4 · head_dim), ``q_rank`` (None = full-rank queries), ``nope_dim``
    (None = head_dim), ``rope_dim`` (None = head_dim / 2; 0 = none), ``v_dim`` (None = head_dim), ``rope``,
    ``rope_theta``, ``norm_eps`` (the latents' RMSNorms), ``bias`` (on the down-projections and the output, as
    transformers' ``attention_bias``), ``chunk_size`` (query block size when continuing from a cache).
    State: {"c": [B, S, kv_rank], "k_rope": [B, S, rope_dim], "pos": [B]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 kv_rank: Annotated[int, POSITIVE] | None = None, q_rank: Annotated[int, POSITIVE] | None = None,
                 nope_dim: Annotated[int, POSITIVE] | None = None, rope_dim: Annotated[int, POSITIVE] | None = None,
                 v_dim: Annotated[int, POSITIVE] | None = None, rope: bool = True,
                 rope_theta: Annotated[float, POSITIVE] = 10000.0, norm_eps: Annotated[float, POSITIVE] = 1e-6,
                 bias: bool = False, chunk_size: Annotated[int, POSITIVE] = 256):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers,
                         head_dim=nope_dim if d_model % n_heads else None)
        d = self.head_dim
        self.kv_rank, self.nope_dim, self.v_dim = kv_rank or 4 * d, nope_dim or d, v_dim or d
        self.rope_dim = d // 2 if rope_dim is None else rope_dim
        if rope and self.rope_dim % 2:
            raise ValueError(f"mla option rope_dim={self.rope_dim}: RoPE needs an even number of channels")
        self.rope, self.rope_theta, self.chunk_size = rope, rope_theta, chunk_size
        q_width = n_heads * (self.nope_dim + self.rope_dim)
        if q_rank is None:
            self.q = Linear(d_model, q_width, bias=False)
        else:
            self.q_down, self.q_norm = Linear(d_model, q_rank, bias=bias), RMSNorm(q_rank, norm_eps)
            self.q = Linear(q_rank, q_width, bias=False)
        self.kv_down = Linear(d_model, self.kv_rank + self.rope_dim, bias=bias)
        self.kv_norm = RMSNorm(self.kv_rank, norm_eps)
        self.kv_up = Linear(self.kv_rank, n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.out = Linear(n_heads * self.v_dim, d_model, bias=bias)

    def init_state(self, batch_size: int):
        c = self._zeros(batch_size, 0, self.kv_rank)
        return {"c": c, "k_rope": self._zeros(batch_size, 0, self.rope_dim),
                "pos": torch.zeros(batch_size, dtype=torch.long, device=c.device)}

    def _keys_values(self, c, k_rope):
        """Latents c [B, S, kv_rank] and rotary keys [B, S, rope_dim] -> k [B, H, S, nope + rope], v [B, H, S, v]."""
        per_head = self.kv_up(c).unflatten(-1, (self.n_heads, self.nope_dim + self.v_dim)).transpose(1, 2)
        k_nope, v = per_head.split([self.nope_dim, self.v_dim], dim=-1)
        k_rope = k_rope[:, None].expand(-1, self.n_heads, -1, -1)
        return torch.cat([k_nope, k_rope], dim=-1), v

    def forward(self, x, state=None, shared=None):
        T = x.shape[1]
        q = self.q(x if not hasattr(self, "q_down") else self.q_norm(self.q_down(x)))
        q = split_heads(q, self.n_heads)
        c, k_rope = self.kv_down(x).split([self.kv_rank, self.rope_dim], dim=-1)
        c = self.kv_norm(c)
        if self.rope and self.rope_dim:
            start = 0 if state is None else state["pos"][:, None]
            positions = torch.arange(T, device=x.device) + start
            q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
            q = torch.cat([q_nope, apply_rope(q_rope, positions, self.rope_theta)], dim=-1)
            k_rope = apply_rope(k_rope[:, None], positions, self.rope_theta)[:, 0]
        k, v = self._keys_values(c, k_rope)
        if state is None:
            o, _ = op.parallel(q, k, v)
            return self.out(merge_heads(o)), None
        cached = self._keys_values(state["c"], state["k_rope"])
        o, _ = (op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], cached) if T == 1 else
                op.chunked(q, k, v, cached, chunk_size=self.chunk_size))
        o = o[:, :, None] if T == 1 else o
        new_state = {"c": torch.cat([state["c"], c], dim=1), "k_rope": torch.cat([state["k_rope"], k_rope], dim=1),
                     "pos": state["pos"] + T}
        return self.out(merge_heads(o)), new_state
