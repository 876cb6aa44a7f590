"""Griffin's recurrent block around the RG-LRU (De et al. 2024, "Griffin", §2.3–2.4, Fig. 2)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import Linear, ShortConv
from seqmix.mixers.base import Mixer, register_mixer
from seqmix.ops import rglru as op
from seqmix.registry import POSITIVE, Annotated


class BlockDiagonalLinear(nn.Module):
    """y = x W + b with W block-diagonal: n_blocks independent [width/n, width/n] maps (Griffin's gate layers)."""

    def __init__(self, width: int, n_blocks: int):
        super().__init__()
        self.n_blocks, size = n_blocks, width // n_blocks
        bound = 1 / math.sqrt(size)  # nn.Linear's default scale per block
        self.weight = nn.Parameter(torch.empty(n_blocks, size, size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_blocks, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(-1, (self.n_blocks, -1))
        return (torch.einsum("...hi,hij->...hj", x, self.weight) + self.bias).flatten(-2)


@register_mixer("rglru")
class RGLRU(Mixer):
    """Two branches, multiplied, then projected back (Griffin's "recurrent block"):

        g = gelu(W_g x);   u = Conv1D(W_u x) (width ``conv_size``);   y = W_o(RG-LRU(u) ⊙ g)
        RG-LRU:  r_t = σ(W_a u_t + b_a),  i_t = σ(W_x u_t + b_x)   (block-diagonal, one block per head)
                 log a_t = −c · r_t · softplus(Λ),   h_t = a_t ⊙ h_{t-1} + √(1 − a_t²) ⊙ (i_t ⊙ u_t)

    Λ is initialised so that exp(−softplus(Λ)) = ρ with ρ² ~ U(0.9², 0.999²) (slow decays), c = 8.
    Options: ``expand`` (recurrence width = expand · d_model, default 1 as in RecurrentGemma), ``conv_size``,
    ``c``, ``chunk_size``, ``bias`` (on W_g, W_u and W_o, as RecurrentGemma), ``reset_first`` (Griffin's reset
    at a sequence's start, as RecurrentGemma: the first token enters unscaled, h_0 = i_0 ⊙ u_0, i.e. a_0 = 0;
    packed documents each start so). State: {"conv": [B, conv_size − 1, width] (pre-conv inputs), "h": [B, width]},
    with ``reset_first`` also "pos": [B] tokens seen so far.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 expand: Annotated[float, POSITIVE] = 1.0, conv_size: Annotated[int, POSITIVE] = 4,
                 c: Annotated[float, POSITIVE] = 8.0, chunk_size: Annotated[int, POSITIVE] = 64, bias: bool = False,
                 reset_first: bool = False):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        width = int(round(expand * d_model))
        if width < n_heads or width % n_heads:
            raise ValueError(f"rglru option expand={expand}: width expand·d_model={width} must be a positive "
                             f"multiple of n_heads={n_heads}")
        self.width, self.c, self.chunk_size, self.reset_first = width, c, chunk_size, reset_first
        self.in_proj = Linear(d_model, 2 * width, bias=bias)  # [gate branch | recurrent branch]
        self.conv = ShortConv(width, conv_size)
        self.gate_a = BlockDiagonalLinear(width, n_heads)
        self.gate_x = BlockDiagonalLinear(width, n_heads)
        radius = torch.empty(width).uniform_(0.9 ** 2, 0.999 ** 2).sqrt()
        self.log_lambda = nn.Parameter(torch.log(torch.expm1(-torch.log(radius))))  # softplus⁻¹(−log ρ)
        self.out = Linear(width, d_model, bias=bias)

    def init_state(self, batch_size: int):
        state = {"conv": self.conv.init_state(batch_size), "h": self._zeros(batch_size, self.width)}
        if self.reset_first:
            state["pos"] = torch.zeros(batch_size, dtype=torch.long, device=state["h"].device)
        return state

    def forward(self, x, state=None, shared=None):
        g, u = self.in_proj(x).chunk(2, dim=-1)
        u, conv_tail = self.conv(u, None if state is None else state["conv"])
        log_a = -self.c * torch.sigmoid(self.gate_a(u)) * F.softplus(self.log_lambda)
        new_state = None if state is None else {"conv": conv_tail}
        if self.reset_first:  # a = 0 (log a = −∞) at position 0: h_0 = √(1 − 0) · i_0 ⊙ u_0
            T = x.shape[1]
            positions = torch.arange(T, device=x.device) + (0 if state is None else state["pos"][:, None])
            log_a = log_a.masked_fill((positions == 0).reshape(-1, T, 1), float("-inf"))
            if state is not None:
                new_state["pos"] = state["pos"] + T
        gated = torch.sigmoid(self.gate_x(u)) * u
        h0 = None if state is None else state["h"]
        if state is not None and x.shape[1] == 1:
            h, h_last = op.step(gated[:, 0], log_a[:, 0], h0)
            h = h[:, None]
        else:
            h, h_last = op.chunked(gated, log_a, h0, self.chunk_size)
        y = self.out(h * F.gelu(g, approximate="tanh"))
        if state is not None:
            new_state["h"] = h_last
        return y, new_state
