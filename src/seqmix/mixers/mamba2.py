"""Mamba-2 mixer, Dao & Gu 2024, §7 (Figure 6) — the block of the reference `mamba2.Mamba2`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import GatedRMSNorm, Linear, ShortConv, cached
from seqmix.mixers.base import Mixer, register_mixer
from seqmix.mixers.mamba import inner_width, inverse_softplus_dt
from seqmix.ops import ssd as op
from seqmix.registry import NON_NEGATIVE, POSITIVE, Annotated, Literal


@register_mixer("mamba2")
class Mamba2(Mixer):
    """x -> in_proj -> [z, u, B, C, Δ]; [u, B, C] -> causal depthwise conv -> SiLU;
    y = SSD(u, softplus(Δ + dt_bias), A, B, C) + D u per head; y -> RMSNorm(y · SiLU(z)) -> out_proj.

    Options: ``expand`` (d_inner = int(expand · d_model)), ``d_inner`` (the width itself, in place of expand:
    Nemotron-H's heads · headdim), ``d_state`` (N), ``headdim`` (P; None = d_inner /
    n_heads, so the model's ``n_heads`` sets the number of SSM heads; otherwise heads = d_inner / headdim),
    ``ngroups`` (G groups of heads sharing B and C, like grouped-query attention; must divide the heads),
    ``d_conv`` (conv width), ``dt_min``/``dt_max`` (range of the initial Δ), ``chunk_size`` (SSD chunk),
    ``dt_limit`` ((low, high): clamp Δ after the softplus; None = no clamp), ``bias`` (biases on in_proj and
    out_proj), ``conv_bias`` (bias of the conv), ``norm_eps`` (eps of the gated RMSNorm), ``gate_norm`` (the
    output's gate and norm: "gate_then_norm", RMSNorm(y · SiLU(z)), Mamba-2's; "norm_then_gate",
    RMSNorm(y) · SiLU(z); "gate_only", y · SiLU(z) without a norm: Falcon-H1's ``mamba_rms_norm=False``),
    ``piece`` (outside autograd a longer sequence runs ``piece`` tokens at a time, see ``Mixer._in_pieces``).
    Every head has one scalar A = −exp(A_log) (init A ~ U[1, 16]) and one D (init 1). The gated RMSNorm
    gates first and normalises over groups of d_inner / ngroups channels (Mamba-2's norm_before_gate=False).
    State: {"conv": [B, d_conv−1, d_inner + 2·G·N] (pre-conv inputs), "ssm": [B, heads, N, P]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 expand: Annotated[float, POSITIVE] = 2, d_state: Annotated[int, POSITIVE] = 64,
                 headdim: Annotated[int, POSITIVE] | None = None, ngroups: Annotated[int, POSITIVE] = 1,
                 d_conv: Annotated[int, POSITIVE] = 4, dt_min: Annotated[float, POSITIVE] = 1e-3,
                 dt_max: Annotated[float, POSITIVE] = 1e-1, chunk_size: Annotated[int, POSITIVE] = 64,
                 dt_limit: tuple[Annotated[float, NON_NEGATIVE], float] | None = None, bias: bool = False,
                 conv_bias: bool = True, norm_eps: Annotated[float, POSITIVE] = 1e-5,
                 d_inner: Annotated[int, POSITIVE] | None = None,
                 gate_norm: Literal["gate_then_norm", "norm_then_gate", "gate_only"] = "gate_then_norm",
                 piece: Annotated[int, POSITIVE] = 1024):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        self.piece = piece
        d_inner = d_inner or inner_width("mamba2", expand, d_model)
        if dt_limit is not None:
            if not dt_limit[0] < dt_limit[1]:
                raise ValueError(f"mamba2 option dt_limit={dt_limit!r}: need low < high")
            dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.dt_limit = dt_limit
        if headdim is None:
            if d_inner % n_heads:
                raise ValueError(f"mamba2: d_inner = {d_inner} is not divisible by "
                                 f"n_heads={n_heads}; set the option headdim")
            headdim = d_inner // n_heads
        if d_inner % headdim:
            raise ValueError(f"mamba2 option headdim={headdim}: must divide d_inner = {d_inner}")
        H = d_inner // headdim
        if H % ngroups:
            raise ValueError(f"mamba2 option ngroups={ngroups}: must divide the number of heads {H}")
        self.d_inner, self.d_state, self.headdim, self.ngroups, self.heads = d_inner, d_state, headdim, ngroups, H
        self.chunk_size = chunk_size
        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = Linear(d_model, d_inner + conv_dim + H, bias=bias)  # [z, u, B, C, Δ]
        self.conv = ShortConv(conv_dim, d_conv, bias=conv_bias)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(H, dt_min, dt_max, floor=1e-4))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.gate_norm = gate_norm
        if gate_norm != "gate_only":
            self.norm = GatedRMSNorm(d_inner, group_size=d_inner // ngroups, eps=norm_eps)
        self.out_proj = Linear(d_inner, d_model, bias=bias)

    def init_state(self, batch_size: int):
        return {"conv": self.conv.init_state(batch_size),
                "ssm": self._zeros(batch_size, self.heads, self.d_state, self.headdim)}

    def _forward(self, x, state):
        Bsz, T, _ = x.shape
        H, G, N, P = self.heads, self.ngroups, self.d_state, self.headdim
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.d_inner + 2 * G * N, H], dim=-1)
        xBC, conv_tail = self.conv(xBC, None if state is None else state["conv"])
        u, B, C = F.silu(xBC).split([self.d_inner, G * N, G * N], dim=-1)
        u = u.view(Bsz, T, H, P).transpose(1, 2)  # [B, H, T, P]
        B, C = (t.view(Bsz, T, G, N).transpose(1, 2) for t in (B, C))  # [B, G, T, N]
        dt = F.softplus(dt + self.dt_bias).transpose(1, 2)  # [B, H, T]
        if self.dt_limit is not None:
            dt = dt.clamp(*self.dt_limit)
        A = cached(self, "A", (self.A_log,), lambda: -torch.exp(self.A_log))
        S = None if state is None else state["ssm"]
        if T == 1 and state is not None:
            y, S = op.step(u[:, :, 0], dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], self.D, S)
            y = y[:, :, None]
        else:
            y, S = op.chunked(u, dt, A, B, C, self.D, S, self.chunk_size)
        y = y.transpose(1, 2).reshape(Bsz, T, self.d_inner)
        if self.gate_norm == "gate_then_norm":
            y = self.norm(y * F.silu(z))
        else:
            y = y * F.silu(z) if self.gate_norm == "gate_only" else self.norm(y, z)
        return self.out_proj(y), {"conv": conv_tail, "ssm": S}
