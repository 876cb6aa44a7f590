r"""Mamba-2's state space duality (SSD), Dao & Gu 2024, "Transformers are SSMs", §3–§6.

Per head h with a *scalar* decay a_t = exp(Δ_t A_h) (A_h < 0), state H_t [N, P]:

    H_t = exp(Δ_t A_h) · H_{t-1} + B_t (Δ_t x_t)ᵀ,        y_t = H_tᵀ C_t + D_h x_t

Dual (quadratic, "masked attention") form, §4: Y = (L ∘ C Bᵀ) (Δ ⊙ X) with the 1-semiseparable mask
L[t, s] = exp(Σ_{s<r≤t} Δ_r A_h) for s ≤ t, computed by a stable segment sum (never a difference of
large cumulative sums, never the exp of a positive number).

With a scalar decay per head this *is* the gated-linear-attention recurrence (S_t = α_t S_{t-1} + k_t v_tᵀ,
o_t = S_tᵀ q_t) with q = C, k = B, v = Δ·x and log α = Δ·A. So `chunked` and `step` call
`seqmix.ops.gated_linear_attention` — its chunked algorithm is the SSD algorithm of §6 (intra-chunk
quadratic blocks, chunk states, inter-chunk recurrence, state-to-output) — and only the oracle `parallel`
is written out here.

Shapes (head-split): x ``[B, H, T, P]``; dt ``[B, H, T]`` (Δ, positive); A ``[H]`` (negative);
B, C ``[B, G, T, N]`` with G = ngroups dividing H (H/G consecutive heads share a group: head h uses
group h // (H/G)); D ``[H]`` or None; state ``[B, H, N, P]``.
"""
from __future__ import annotations

import torch

from seqmix.ops import gated_linear_attention as gla
from seqmix.ops.gated_linear_attention import segsum

Tensor = torch.Tensor


def _expand_groups(x: Tensor, H: int) -> Tensor:
    """[B, G, ..] -> [B, H, ..]: each group's B or C serves H/G consecutive heads."""
    G = x.shape[1]
    if H % G:
        raise ValueError(f"ssd: the number of heads {H} is not divisible by ngroups={G}")
    if G == H:
        return x
    return x.unsqueeze(2).expand(x.shape[0], G, H // G, *x.shape[2:]).flatten(1, 2)  # a view when G = 1


def _inputs(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, time_axis: bool):
    """(q, k, v, log α) of the gated-linear-attention form: (C, B, Δ·x, Δ·A), B and C expanded to heads."""
    H = x.shape[1]
    if dt.shape != x.shape[:-1] or A.shape != (H,) or B.shape != C.shape or B.shape[0] != x.shape[0] \
            or (time_axis and B.shape[2] != x.shape[2]):
        raise ValueError(f"ssd: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)} do not match (expected x [B,H,T,P], dt [B,H,T], A [H], B, C [B,G,T,N])")
    log_decay = dt * (A[:, None] if time_axis else A)  # Δ_t A_h, ≤ 0
    return _expand_groups(C, H), _expand_groups(B, H), x * dt[..., None], log_decay


def _skip(y: Tensor, x: Tensor, D: Tensor | None) -> Tensor:
    if D is None:
        return y
    return y + x * D.view(-1, *([1] * (x.dim() - 2)))


def parallel(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
             state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Quadratic form: y = (L ∘ C Bᵀ)(Δx) + (C ⊙ exp(Σ_{r≤t} Δ_r A)) H_0; final H_T likewise. O(T²)."""
    q, k, v, g = _inputs(x, dt, A, B, C, time_axis=True)
    Bsz, H, T, P = x.shape
    if state is None:
        state = x.new_zeros(Bsz, H, k.shape[-1], P)
    L = segsum(g[..., None])[..., 0].exp()  # [B, H, T, T], zero above the diagonal
    y = (L * (q @ k.transpose(-1, -2))) @ v
    to_t = g.cumsum(dim=-1).exp()[..., None]  # exp(Σ_{r≤t} Δ_r A)
    y = y + (q * to_t) @ state
    final = to_t[:, :, -1:] * state + (k * L[:, :, -1, :, None]).transpose(-1, -2) @ v
    return _skip(y, x, D), final


def chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
            state: Tensor | None = None, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """The chunked SSD algorithm (§6), i.e. gated linear attention with a per-head scalar decay. Any T."""
    q, k, v, g = _inputs(x, dt, A, B, C, time_axis=True)
    y, state = gla.chunked(q, k, v, g, state, chunk_size=chunk_size)
    return _skip(y, x, D), state


def step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
         state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: x [B, H, P], dt [B, H], B, C [B, G, N], state [B, H, N, P]."""
    q, k, v, g = _inputs(x, dt, A, B, C, time_axis=False)
    y, state = gla.step(q, k, v, g, state)
    return _skip(y, x, D), state
