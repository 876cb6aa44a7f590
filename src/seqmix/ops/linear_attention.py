r"""Linear attention, "Transformers are RNNs" (Katharopoulos et al. 2020), on the gated-linear-attention core.

With feature-mapped queries and keys φ(q), φ(k) (the mixer applies φ):

    S_t = S_{t-1} + φ(k_t) v_tᵀ,   z_t = z_{t-1} + φ(k_t),   o_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + eps)

The normaliser z is the same recurrence with v = 1, so both are one gated-linear-attention call (no
decay) on [v, 1]. ``normalize=False`` is the simplified form o_t = φ(q_t)ᵀ S_t (the mixer then applies
an output norm). The state is S with the z column appended when normalising: ``[B, H, Dk, Dv(+1)]``.
"""
from __future__ import annotations

import torch

from seqmix.ops import gated_linear_attention as gla

Tensor = torch.Tensor


def _with_ones(v: Tensor, normalize: bool) -> Tensor:
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1) if normalize else v


def _finish(out: Tensor, normalize: bool, eps: float) -> Tensor:
    return out[..., :-1] / (out[..., -1:] + eps) if normalize else out


def parallel(q: Tensor, k: Tensor, v: Tensor, state: Tensor | None = None, normalize: bool = True,
             eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    out, state = gla.parallel(q, k, _with_ones(v, normalize), None, state)
    return _finish(out, normalize, eps), state


def chunked(q: Tensor, k: Tensor, v: Tensor, state: Tensor | None = None, normalize: bool = True,
            eps: float = 1e-6, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    out, state = gla.chunked(q, k, _with_ones(v, normalize), None, state, chunk_size=chunk_size)
    return _finish(out, normalize, eps), state


def step(q: Tensor, k: Tensor, v: Tensor, state: Tensor | None = None, normalize: bool = True,
         eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """One token: q, k [B, H, Dk], v [B, H, Dv]."""
    out, state = gla.step(q, k, _with_ones(v, normalize), None, state)
    return _finish(out, normalize, eps), state
