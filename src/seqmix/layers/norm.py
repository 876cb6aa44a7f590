"""RMSNorm, the gated RMSNorm used on the output of linear-attention-style mixers, and `make_norm`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel


class GatedRMSNorm(RMSNorm):
    """y = RMSNorm(x) · act(gate), normalising over groups of `group_size` channels (one group per head);
    act = silu (GLA, Gated DeltaNet) or sigmoid (Kimi Delta Attention).

    Norm, then gate: GLA's fused norm-swish output gate. Mamba-2's `RMSNormGated` gates first and then
    normalises; call it without a gate on the gated input, ``norm(y · silu(z))``.
    """

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-5, activation: str = "silu"):
        super().__init__(dim, eps)
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(f"GatedRMSNorm: dim={dim} is not divisible by group_size={self.group_size}")
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(f"GatedRMSNorm: activation={activation!r}; choose one of {list(GATE_ACTIVATIONS)}")
        self.activation = GATE_ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        groups = x.reshape(*shape[:-1], -1, self.group_size)
        if gate is not None and not torch.is_grad_enabled():
            # nothing recorded: one new tensor, act(gate), scaled in place (at 4096 tokens × 1024 channels each
            # new tensor's first touch costs about as much as the arithmetic)
            inv_rms = torch.linalg.vecdot(groups, groups).unsqueeze(-1).div_(self.group_size)
            y = self.activation(gate).reshape(groups.shape)
            y.mul_(groups).mul_(inv_rms.add_(self.eps).rsqrt_())
            return y.reshape(shape).mul_(self.weight)
        x = F.rms_norm(groups, (self.group_size,), None, self.eps).reshape(shape) * self.weight
        return x if gate is None else x * self.activation(gate)


GATE_ACTIVATIONS = {"silu": F.silu, "sigmoid": torch.sigmoid}


NORMS = ("rmsnorm", "layernorm")


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """The model's norm by name: "rmsnorm" (weight only) or "layernorm" (torch's, weight and bias; RWKV's)."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"norm={kind!r} is not allowed; choose one of {list(NORMS)}")
