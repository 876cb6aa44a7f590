r"""RWKV-6 ("Finch") WKV with a matrix-valued state per head (Peng et al. 2024, "Eagle and Finch", §4):

    S_t = diag(w_t) S_{t-1} + k_t v_tᵀ,        o_t = S_{t-1}ᵀ r_t + (r_t · (u ⊙ k_t)) v_t

with w_t = exp(log_w_t) ∈ (0, 1] per token and key channel (data-dependent decay) and u the bonus of the
current token. Shapes: r, k ``[B, H, T, Dk]``, v ``[B, H, T, Dv]``, log_w ``[B, H, T, Dk]``, u ``[H, Dk]``,
state S ``[B, H, Dk, Dv]``, output ``[B, H, T, Dv]``.

RWKV reads the state *before* the current token's update. Gated linear attention keeps the very same
S_t (S_t = diag(exp g_t) S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t), so r_tᵀ S_{t-1} is GLA's output at position
t-1 for the query r_t: ``chunked`` runs the GLA core with the receptances moved one position earlier
(position 0 reads the initial state directly, the last query slot is zero) and adds the bonus. No new
recurrence; all decay handling (log-space, exp only of non-positive sums) is GLA's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.ops import gated_linear_attention as gla

Tensor = torch.Tensor


def _check(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor) -> None:
    shapes_ok = k.shape == r.shape == log_w.shape and v.shape[:-1] == r.shape[:-1]
    if not shapes_ok or u.shape != (r.shape[1], r.shape[-1]):
        raise ValueError(f"rwkv6: r {tuple(r.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"log_w {tuple(log_w.shape)}, u {tuple(u.shape)} do not match")


def _bonus(r: Tensor, k: Tensor, v: Tensor, u: Tensor) -> Tensor:
    """(r_t · (u ⊙ k_t)) v_t: the current token's contribution, which skips the state."""
    return (r * u.unsqueeze(-2) * k).sum(dim=-1, keepdim=True) * v


def parallel(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor,
             state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Materialised form, the state read before each update:

        o_t = Σ_{s<t} (r_t ⊙ exp(Σ_{s<ρ<t} log w_ρ))·k_s v_s + bonus_t + (r_t ⊙ exp(Σ_{ρ<t} log w_ρ))ᵀ S_0
    """
    _check(r, k, v, log_w, u)
    B, H, T, Dk = r.shape
    if state is None:
        state = r.new_zeros(B, H, Dk, v.shape[-1])
    b = log_w.cumsum(dim=2)  # Σ_{ρ≤t}
    before = F.pad(b[:, :, :-1], (0, 0, 1, 0))  # Σ_{ρ<t}: the decay S_0 has seen when read at t
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=r.device), diagonal=-1)
    between = (before.unsqueeze(3) - b.unsqueeze(2)).masked_fill(~strict[..., None], float("-inf"))
    scores = torch.einsum("bhtd,bhtsd,bhsd->bhts", r, between.exp(), k)
    out = scores @ v + _bonus(r, k, v, u) + (r * before.exp()) @ state
    S = b[:, :, -1, :, None].exp() * state + (k * (b[:, :, -1:] - b).exp()).transpose(-1, -2) @ v
    return out, S


def chunked(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, state: Tensor | None = None,
            chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """GLA's chunked form with queries shifted one position earlier: q_s = r_{s+1}."""
    _check(r, k, v, log_w, u)
    if state is None:
        state = r.new_zeros(*r.shape[:2], r.shape[-1], v.shape[-1])
    q = F.pad(r[:, :, 1:], (0, 0, 0, 1))
    o_gla, S = gla.chunked(q, k, v, log_w, state, chunk_size=chunk_size)
    first = r[:, :, :1] @ state  # position 0 reads the initial state
    out = torch.cat([first, o_gla[:, :, :-1]], dim=2) + _bonus(r, k, v, u)
    return out, S


def step(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor,
         state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: r, k, log_w [B, H, Dk], v [B, H, Dv]."""
    if state is None:
        state = r.new_zeros(*r.shape, v.shape[-1])
    out = (r.unsqueeze(-2) @ state).squeeze(-2) + (r * u * k).sum(dim=-1, keepdim=True) * v
    state = torch.addcmul(log_w.exp().unsqueeze(-1) * state, k.unsqueeze(-1), v.unsqueeze(-2))
    return out, state
