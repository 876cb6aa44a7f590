"""Block-State Transformer layer (Fathi et al. 2023, "Block-State Transformers", §3, Fig. 1–2)."""
from __future__ import annotations

import math

import torch
from torch import nn

from seqmix.layers import Linear, apply_rope, cached
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import block_attention as attn
from seqmix.ops import lti_ssm as ssm
from seqmix.registry import EVEN, POSITIVE, Annotated, Literal


@register_mixer("bst")
class BlockStateTransformer(Mixer):
    """An SSM over the whole sequence makes context states; blocks of W tokens attend to themselves
    (causally) and to their block's context states; out = W_o [self-attention ; cross-attention].

        y = SSM(x)  (diagonal LTI SSM, S4D-Lin init, FFT convolution: O(T log T))
        block k (tokens kW .. kW+W-1): self-attention inside the block (RoPE) + cross-attention to ctx_k

    Context states (``variant``; our reading of the paper's three variants):

    * ``"sh"`` (single head): ctx_k = the W SSM outputs y_{(k-1)W} .. y_{kW-1} of the previous block;
    * ``"mh"`` (multi head): ctx_k = the last output before the block, y_{kW-1}, projected into
      ``n_context`` heads (a d_model -> n_context·d_model map, each head one context state);
    * ``"mf"`` (multi filter): the SSM runs ``n_context`` independent filters per channel;
      ctx_k = the n_context filter outputs at y_{kW-1}.

    Strict causality: block k only reads SSM outputs at positions < kW, i.e. computed from tokens before
    the block (a shift by one block for "sh", by one token past the block end for "mh"/"mf"), so no token
    sees a context state computed from itself or a later token; block 0 has zero context states.
    Cost: O(T log T) for the SSM plus O(T·W) for the attention, and O(W) per decoded token.

    Options: ``variant``, ``block_size`` W, ``n_context`` (mh/mf), ``d_state`` (real SSM state size per
    channel and filter, even), ``dt_min``/``dt_max``, ``rope``, ``rope_theta``, ``ssm_chunk_size`` (None: one
    FFT over the input; an int: FFT chunk by chunk).
    State: {"ssm": [B, F·d_model, d_state/2, 2] (complex as pairs), "k", "v": [B, H, r, D] cache of the
    r < W tokens of the current block, "ctx": [B, S, d_model] its context states, "y": [B, r, d_model]
    the current block's SSM outputs ("sh" only: the next block's context), "pos": [B]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 variant: Literal["sh", "mh", "mf"] = "sh", block_size: Annotated[int, POSITIVE] = 32,
                 n_context: Annotated[int, POSITIVE] = 4, d_state: Annotated[int, POSITIVE, EVEN] = 32,
                 dt_min: Annotated[float, POSITIVE] = 1e-3, dt_max: Annotated[float, POSITIVE] = 1e-1,
                 rope: bool = True, rope_theta: Annotated[float, POSITIVE] = 10000.0,
                 ssm_chunk_size: Annotated[int, POSITIVE] | None = None):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        if dt_min > dt_max:
            raise ValueError(f"bst options dt_min={dt_min}, dt_max={dt_max}: need dt_min <= dt_max")
        self.variant, self.block_size, self.rope, self.rope_theta = variant, block_size, rope, rope_theta
        self.ssm_chunk_size = ssm_chunk_size
        self.filters = n_context if variant == "mf" else 1
        self.n_context = block_size if variant == "sh" else n_context
        H, N = self.filters * d_model, d_state // 2
        self.modes = N
        # S4D-Lin (Gu et al. 2022, §4): A_n = -1/2 + iπn, B = 1, C complex normal, Δ log-uniform
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_A_real = nn.Parameter(torch.full((H, N), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(N, dtype=torch.float32).repeat(H, 1))
        self.C = nn.Parameter(torch.randn(H, N, 2) * 0.5 ** 0.5)
        self.heads = Linear(d_model, n_context * d_model, bias=False) if variant == "mh" else None
        self.qkv = Linear(d_model, 3 * d_model, bias=False)
        self.q_ctx = Linear(d_model, d_model, bias=False)
        self.kv_ctx = Linear(d_model, 2 * d_model, bias=False)
        self.out = Linear(2 * d_model, d_model, bias=False)

    def init_state(self, batch_size: int):
        empty = self._zeros(batch_size, self.n_heads, 0, self.head_dim)
        state = {"ssm": self._zeros(batch_size, self.filters * self.d_model, self.modes, 2),
                 "k": empty, "v": empty.clone(), "ctx": self._zeros(batch_size, self.n_context, self.d_model),
                 "pos": torch.zeros(batch_size, dtype=torch.long, device=empty.device)}
        if self.variant == "sh":
            state["y"] = self._zeros(batch_size, 0, self.d_model)
        return state

    def _discretized(self):
        """(Ā, B̄) of A = −exp(log_A_real) + i·A_imag at step exp(log_dt): parameters only."""
        return ssm.discretize(torch.exp(self.log_dt), torch.complex(-torch.exp(self.log_A_real), self.A_imag))

    def _ssm(self, x, state):
        """y = SSM(x): [B, T, F·d_model] (filter f of channel c at index f·d_model + c), and the new SSM state."""
        dtA, dB = cached(self, "discretized", (self.log_A_real, self.A_imag, self.log_dt), self._discretized)
        C = torch.view_as_complex(self.C)
        u = x.transpose(1, 2).repeat(1, self.filters, 1)  # [B, F·d, T]
        s = None if state is None else torch.view_as_complex(state["ssm"].contiguous())
        if state is not None and x.shape[1] == 1:
            y, s = ssm.step(u[..., 0], dtA, dB, C, s)
            y = y[..., None]
        else:
            y, s = ssm.chunked(u, dtA, dB, C, s, self.ssm_chunk_size)
        return y.transpose(1, 2), s

    def _contexts(self, y, y_cached, r: int, n_done: int):
        """Context states of the blocks that start inside this call: [B, n_done, S, d_model], block j from
        the SSM outputs of the block before it (positions counted from the current block's start)."""
        W, B = self.block_size, y.shape[0]
        if self.variant == "sh":
            y_view = y if y_cached is None else torch.cat([y_cached, y], dim=1)
            return y_view[:, :n_done * W].reshape(B, n_done, W, self.d_model)
        last = torch.arange(1, n_done + 1, device=y.device) * W - 1 - r  # index in y of each block's last token
        y_last = y[:, last]  # [B, n_done, F·d]
        if self.variant == "mh":
            y_last = self.heads(y_last)
        return y_last.reshape(B, n_done, self.n_context, self.d_model)

    def forward(self, x, state=None, shared=None):
        B, T, _ = x.shape
        W, H = self.block_size, self.n_heads
        r = 0 if state is None else state["k"].shape[2]
        n_done = (r + T) // W  # blocks that end inside this call
        q, k, v = (split_heads(t, H) for t in self.qkv(x).chunk(3, dim=-1))
        if self.rope:
            positions = torch.arange(T, device=x.device) + (0 if state is None else state["pos"][:, None])
            q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
        y, s = self._ssm(x, state)
        first = self._zeros(B, 1, self.n_context, self.d_model) if state is None else state["ctx"][:, None]
        y_cached = None if state is None else state.get("y")
        ctx = torch.cat([first, self._contexts(y, y_cached, r, n_done)], dim=1)  # [B, n_done + 1, S, d]
        n_blocks = -(-(r + T) // W)
        ck, cv = (split_heads(t.flatten(1, 2), H).unflatten(2, (n_done + 1, -1)) for t in
                  self.kv_ctx(ctx).chunk(2, dim=-1))  # [B, H, n_done + 1, S, D]
        qc = split_heads(self.q_ctx(x), H)
        cache = None if state is None else (state["k"], state["v"])
        if state is not None and T == 1:
            o, (kc, vc) = attn.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], qc[:, :, 0], ck[:, :, 0], cv[:, :, 0], W, cache)
            o = o[:, :, None]
        else:
            o, (kc, vc) = attn.chunked(q, k, v, qc, ck[:, :, :n_blocks], cv[:, :, :n_blocks], W, cache)
        out = self.out(merge_heads(o))
        if state is None:
            return out, None
        new_state = {"ssm": torch.view_as_real(s), "k": kc, "v": vc, "ctx": ctx[:, -1], "pos": state["pos"] + T}
        if self.variant == "sh":
            y_view = y if y_cached is None else torch.cat([y_cached, y], dim=1)
            new_state["y"] = y_view[:, n_done * W:]
        return out, new_state
