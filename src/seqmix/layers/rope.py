"""Rotary position embedding (RoPE), in the half-split (GPT-NeoX/Llama) or interleaved-pair (GPT-J, TTT) layout."""
from __future__ import annotations

import torch

_INV_FREQ: dict[tuple, torch.Tensor] = {}  # (D, theta, device) -> theta^(-2i/D) in float64, built once


def _inv_freq(d: int, theta: float, device: torch.device) -> torch.Tensor:
    key = (d, float(theta), device)
    if key not in _INV_FREQ:
        with torch.inference_mode(False):  # usable with and without autograd, whichever mode first asks
            _INV_FREQ[key] = theta ** (-torch.arange(0, d, 2, device=device, dtype=torch.float64) / d)
    return _INV_FREQ[key]


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0, interleaved: bool = False) -> torch.Tensor:
    """Rotate pairs of channels of x [.., B, H, T, D] by angle position · theta^(-2i/D).

    positions: [T] or [B, T] (integer or float). interleaved=True pairs channels (2i, 2i+1);
    otherwise (i, i + D/2). Angles are formed in float64 (so large positions keep their precision), then
    cast to x's dtype (to float32 for the rotation when x is half precision: complex bfloat16 does not exist).
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {d}")
    angles = positions.to(torch.float64)[..., None] * _inv_freq(d, theta, x.device)  # [.., T, D/2]
    if angles.dim() == 3:  # [B, T, D/2] -> broadcast over heads
        angles = angles[:, None]
    if interleaved:  # pairs (2i, 2i+1) are complex numbers x_2i + i·x_2i+1: one complex multiply rotates all
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        pairs = torch.view_as_complex(x.to(work).reshape(*x.shape[:-1], d // 2, 2).contiguous())
        rotation = torch.complex(angles.cos().to(work), angles.sin().to(work))
        return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
