"""xLSTM's mLSTM layer (Beck et al. 2024, "xLSTM", §2.3 and Fig. 11, the pre-up-projection block)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import Linear, ShortConv
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import mlstm as op
from seqmix.registry import POSITIVE, Annotated, Literal


class _BlockDiagonal(nn.Module):
    """A block-diagonal linear map (xLSTM's headwise q/k/v projections): blocks of `block` channels."""

    def __init__(self, dim: int, block: int):
        super().__init__()
        bound = 1 / math.sqrt(block)
        self.weight = nn.Parameter(torch.empty(dim // block, block, block).uniform_(-bound, bound))

    def forward(self, x):
        blocks = x.unflatten(-1, self.weight.shape[:2])  # [.., n, block]
        return torch.einsum("...nd,noe->...ne", blocks, self.weight.transpose(-1, -2)).flatten(-2)


@register_mixer("mlstm")
class MLSTM(Mixer):
    """Up-projection to 2·inner (x, z); x_c = silu(short conv x); q, k = blockdiag(x_c), v = blockdiag(x);
    ĩ, f̃ = linear(q, k, v) per head; h = mLSTM(q, k/√d, v; ĩ, f̃) (ops.mlstm); h = (GroupNorm(h) + s ⊙ x_c)
    ⊙ silu(z); y = W_down h.

    Options: ``forget_gate`` "sigmoid" (log f = logsigmoid(f̃), the paper's default) or "exp" (log f = f̃;
    its bias starts at logsigmoid of the sigmoid gate's, so both start with the same f); ``proj_factor`` (2,
    inner = proj_factor·d_model), ``conv_size`` (4), ``qkv_blocksize`` (4), ``chunk_size``, ``eps`` (1e-6).
    Gate init as the reference: zero weights, forget bias linspace(3, 6), input bias N(0, 0.1). Heads: the
    model's n_heads over inner. State: {"conv": [B, K-1, inner], "C": [B, H, D, D], "n": [B, H, D], "m": [B, H]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 forget_gate: Literal["sigmoid", "exp"] = "sigmoid", proj_factor: Annotated[float, POSITIVE] = 2.0,
                 conv_size: Annotated[int, POSITIVE] = 4, qkv_blocksize: Annotated[int, POSITIVE] = 4,
                 chunk_size: Annotated[int, POSITIVE] = 64, eps: Annotated[float, POSITIVE] = 1e-6):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        inner = int(round(proj_factor * d_model))
        if inner < 1 or inner % n_heads or inner % qkv_blocksize:
            raise ValueError(f"mlstm: inner width proj_factor·d_model = {inner} must be positive and divisible by "
                             f"n_heads={n_heads} and qkv_blocksize={qkv_blocksize}")
        self.forget_gate, self.chunk_size, self.eps = forget_gate, chunk_size, eps
        self.inner, self.dh = inner, inner // n_heads
        self.up = Linear(d_model, 2 * inner, bias=False)
        self.conv = ShortConv(inner, conv_size)
        self.q, self.k, self.v = (_BlockDiagonal(inner, qkv_blocksize) for _ in range(3))
        self.igate = Linear(3 * inner, n_heads)
        self.fgate = Linear(3 * inner, n_heads)
        with torch.no_grad():
            for gate in (self.igate, self.fgate):
                gate.weight.zero_()
            self.igate.bias.normal_(0.0, 0.1)
            f_bias = torch.linspace(3.0, 6.0, n_heads)
            self.fgate.bias.copy_(f_bias if forget_gate == "sigmoid" else F.logsigmoid(f_bias))
        self.norm_weight = nn.Parameter(torch.ones(inner))  # per-head LayerNorm, weight only (as xLSTM)
        self.skip = nn.Parameter(torch.ones(inner))
        self.down = Linear(inner, d_model, bias=False)

    def init_state(self, batch_size: int):
        C, n, m = op.init_state(batch_size, self.n_heads, self.dh, self.dh)
        p = self.skip
        return {"conv": self.conv.init_state(batch_size),
                "C": C.to(p), "n": n.to(p), "m": m.to(p)}

    def forward(self, x, state=None, shared=None):
        B, T, _ = x.shape
        H = self.n_heads
        x_m, z = self.up(x).chunk(2, dim=-1)
        x_c, conv_tail = self.conv(x_m, None if state is None else state["conv"])
        x_c = F.silu(x_c)
        q, k, v = self.q(x_c), self.k(x_c), self.v(x_m)
        gates_in = torch.cat([q, k, v], dim=-1)
        log_i = self.igate(gates_in).transpose(1, 2)  # [B, H, T]
        f_pre = self.fgate(gates_in).transpose(1, 2)
        log_f = F.logsigmoid(f_pre) if self.forget_gate == "sigmoid" else f_pre
        q, k, v = split_heads(q, H), split_heads(k, H), split_heads(v, H)
        cell_state = None if state is None else (state["C"], state["n"], state["m"])
        scale = self.dh ** -0.5
        if T == 1 and state is not None:
            h, cell_state = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_i[:, :, 0], log_f[:, :, 0], cell_state,
                                    scale, self.eps)
            h = h.unsqueeze(2)
        else:
            h, cell_state = op.chunked(q, k, v, log_i, log_f, cell_state, scale, self.eps, self.chunk_size)
        h = F.group_norm(merge_heads(h).reshape(B * T, self.inner), H, self.norm_weight, None, 1e-5).view(B, T, -1)
        y = self.down((h + self.skip * x_c) * F.silu(z))
        if state is None:
            return y, None
        C, n, m = cell_state
        return y, {"conv": conv_tail, "C": C, "n": n, "m": m}
