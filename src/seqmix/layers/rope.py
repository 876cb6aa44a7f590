"""Rotary position embedding (RoPE), in the half-split (GPT-NeoX/Llama) or interleaved-pair (GPT-J, TTT) layout."""
from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0, interleaved: bool = False) -> torch.Tensor:
    """Rotate pairs of channels of x [B, H, T, D] by angle position · theta^(-2i/D).

    positions: [T] or [B, T] (integer or float). interleaved=True pairs channels (2i, 2i+1);
    otherwise (i, i + D/2).
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {d}")
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    pos = positions.to(torch.float64)
    angles = pos[..., None] * inv_freq  # [.., T, D/2]
    if angles.dim() == 3:  # [B, T, D/2] -> broadcast over heads
        angles = angles[:, None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
