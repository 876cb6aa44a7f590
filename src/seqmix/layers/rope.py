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


def apply_rope(x, positions: torch.Tensor, theta: float = 10000.0, interleaved: bool = False):
    """Rotate pairs of channels of x [.., B, H, T, D] by angle position · theta^(-2i/D).

    x: a tensor, or a tuple of tensors of one shape (q and k: the angles are formed once), returned alike.
    positions: [T] or [B, T] (integer or float). interleaved=True pairs channels (2i, 2i+1);
    otherwise (i, i + D/2). Angles are formed in float64 (so large positions keep their precision), then
    cast to x's dtype (to float32 for the rotation when x is half precision: complex bfloat16 does not exist).
    The interleaved rotation keeps x's memory layout (heads-split views of [B, T, H·D] are not copied first).
    """
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    d = xs[0].shape[-1]
    if d % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {d}")
    angles = positions.to(torch.float64)[..., None] * _inv_freq(d, theta, xs[0].device)  # [.., T, D/2]
    if angles.dim() == 3:  # [B, T, D/2] -> broadcast over heads
        angles = angles[:, None]
    if interleaved and torch.compiler.is_compiling():  # the same rotation in real arithmetic (inductor has no
        cos, sin = angles.cos().to(xs[0].dtype), angles.sin().to(xs[0].dtype)  # complex code generation)
        pairs = tuple(t.unflatten(-1, (-1, 2)) for t in xs)
        outs = tuple(torch.stack([p[..., 0] * cos - p[..., 1] * sin, p[..., 0] * sin + p[..., 1] * cos], -1).flatten(-2)
                     for p in pairs)
    elif interleaved:  # pairs (2i, 2i+1) are complex numbers x_2i + i·x_2i+1: one complex multiply rotates all
        work = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
        rotation = torch.complex(angles.cos().to(work), angles.sin().to(work))
        outs = tuple(torch.view_as_real(_complex_pairs(t.to(work)) * rotation).flatten(-2).to(t.dtype) for t in xs)
    else:
        cos, sin = angles.cos().to(xs[0].dtype), angles.sin().to(xs[0].dtype)
        outs = tuple(torch.cat([t[..., :d // 2] * cos - t[..., d // 2:] * sin,
                                t[..., :d // 2] * sin + t[..., d // 2:] * cos], dim=-1) for t in xs)
    return outs if isinstance(x, (tuple, list)) else outs[0]


def _complex_pairs(x: torch.Tensor) -> torch.Tensor:
    """x [.., D] as complex [.., D/2] from pairs (2i, 2i+1): a view when the strides allow one, else a copy."""
    pairs = x.unflatten(-1, (-1, 2))
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        pairs = pairs.contiguous()
    return torch.view_as_complex(pairs)
