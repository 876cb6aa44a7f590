"""Mamba (S6) mixer, Gu & Dao 2023, §3.4 (Figure 3) — the block of the reference `mamba_simple.Mamba`."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import Linear, RMSNorm, ShortConv, cached
from seqmix.mixers.base import Mixer, register_mixer
from seqmix.ops import selective_scan as op
from seqmix.registry import POSITIVE, Annotated, Literal


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """Bias b with softplus(b) = Δ, Δ log-uniform in [dt_min, dt_max] (clamped at `floor`), Mamba §3.6 / Mamba-2."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"dt_min={dt_min}, dt_max={dt_max}: need 0 < dt_min <= dt_max")
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus⁻¹(Δ) = Δ + log(1 − e^{−Δ})


def inner_width(mixer: str, expand: float, d_model: int) -> int:
    """d_inner = int(expand · d_model), transformers' rule (expand may be fractional); must be ≥ 1."""
    if int(expand * d_model) < 1:
        raise ValueError(f"{mixer} option expand={expand!r}: int(expand·d_model) = {int(expand * d_model)} must be ≥ 1")
    return int(expand * d_model)


@register_mixer("mamba")
class Mamba(Mixer):
    """x -> in_proj -> (u, z); u -> causal depthwise conv -> SiLU -> x_proj -> (Δ_low, B, C);
    Δ = softplus(dt_proj Δ_low); y = S6(u, Δ, A, B, C) + D u; y · SiLU(z) -> out_proj.

    Options: ``expand`` (d_inner = int(expand · d_model) channels, each its own SSM; may be fractional, as
    in transformers' MambaConfig), ``d_state`` (N, the state size per channel), ``d_conv`` (conv width),
    ``dt_rank`` (rank of the Δ projection; "auto" = ⌈d_model/16⌉), ``dt_min``/``dt_max`` (range of the
    initial Δ), ``chunk_size`` (scan chunk), ``bias`` (biases on in_proj and out_proj; off in the
    reference), ``conv_bias`` (bias of the conv; on in the reference), ``dt_bc_norm`` (RMSNorm of Δ_low, B
    and C, each over its own channels, before dt_proj and the scan: "none" (the reference), "rms" without
    scales (Falcon-Mamba), "rms_weight" with learned scales (Jamba)), ``dt_bc_norm_eps`` (their eps).
    Mamba has no heads: ``n_heads`` is not used. A = −exp(A_log) with the S4D-real init A_log[d, n] =
    log(n+1); D = 1.
    State: {"conv": [B, d_conv−1, d_inner] (pre-conv inputs), "ssm": [B, d_inner, N]}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 expand: Annotated[float, POSITIVE] = 2, d_state: Annotated[int, POSITIVE] = 16,
                 d_conv: Annotated[int, POSITIVE] = 4, dt_rank: Annotated[int, POSITIVE] | Literal["auto"] = "auto",
                 dt_min: Annotated[float, POSITIVE] = 1e-3, dt_max: Annotated[float, POSITIVE] = 1e-1,
                 chunk_size: Annotated[int, POSITIVE] = 16, bias: bool = False, conv_bias: bool = True,
                 dt_bc_norm: Literal["none", "rms", "rms_weight"] = "none",
                 dt_bc_norm_eps: Annotated[float, POSITIVE] = 1e-6):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        d_inner = inner_width("mamba", expand, d_model)
        self.d_inner, self.d_state, self.dt_rank, self.chunk_size = d_inner, d_state, dt_rank, chunk_size
        self.in_proj = Linear(d_model, 2 * d_inner, bias=bias)
        self.conv = ShortConv(d_inner, d_conv, bias=conv_bias)
        self.x_proj = Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = Linear(dt_rank, d_inner)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_dt(d_inner, dt_min, dt_max, floor=1e-4))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = Linear(d_inner, d_model, bias=bias)
        self.dt_bc_norm, self.dt_bc_norm_eps = dt_bc_norm, dt_bc_norm_eps
        if dt_bc_norm == "rms_weight":
            self.dt_norm = RMSNorm(dt_rank, dt_bc_norm_eps)
            self.B_norm, self.C_norm = RMSNorm(d_state, dt_bc_norm_eps), RMSNorm(d_state, dt_bc_norm_eps)

    def _normalise(self, dt, B, C):
        if self.dt_bc_norm == "rms_weight":
            return self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        return tuple(F.rms_norm(t, t.shape[-1:], None, self.dt_bc_norm_eps) for t in (dt, B, C))

    def init_state(self, batch_size: int):
        return {"conv": self.conv.init_state(batch_size), "ssm": self._zeros(batch_size, self.d_inner, self.d_state)}

    def forward(self, x, state=None, shared=None):
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, conv_tail = self.conv(u, None if state is None else state["conv"])
        u = F.silu(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.dt_bc_norm != "none":
            dt, B, C = self._normalise(dt, B, C)
        dt = F.softplus(self.dt_proj(dt))
        A = cached(self, "A", (self.A_log,), lambda: -torch.exp(self.A_log))
        h = None if state is None else state["ssm"]
        if x.shape[1] == 1 and state is not None:
            y, h = op.step(u[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], self.D, h)
            y = y[:, None]
        else:
            y, h = op.chunked(u, dt, A, B, C, self.D, h, self.chunk_size)
        y = self.out_proj(y * F.silu(z))
        return y, (None if state is None else {"conv": conv_tail, "ssm": h})
