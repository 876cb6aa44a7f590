r"""Gated linear attention: the shared core of linear attention, RetNet, GLA, Mamba-2 (SSD), mLSTM, RWKV-5/6.

Recurrence (Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training"):

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,        o_t = S_tᵀ (scale · q_t)

with α_t = exp(g_t) ∈ (0, 1]. ``log_decay`` g is per head ``[B, H, T]`` (scalar decay: RetNet, Mamba-2,
mLSTM) or per key channel ``[B, H, T, Dk]`` (GLA, RWKV-6), or ``None`` for no decay (linear attention).
Shapes: q, k ``[B, H, T, Dk]``, v ``[B, H, T, Dv]``, state S ``[B, H, Dk, Dv]``.

Numerics: decays are only ever applied as exp of a *non-positive* log-space sum
(b_t - b_s with s ≤ t, where b is a cumulative sum of g ≤ 0), so nothing overflows at any length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

SUBCHUNK = 16  # intra-chunk block size for per-channel decay (see `_intra_chunk_channel`)


def _prepare(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, state: Tensor | None, scale: float):
    B, H, T, Dk = q.shape
    if k.shape != q.shape or v.shape[:3] != (B, H, T):
        raise ValueError(f"gated_linear_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if log_decay is not None:
        if log_decay.dim() == 3:
            log_decay = log_decay.unsqueeze(-1)
        if log_decay.shape[:3] != (B, H, T) or log_decay.shape[-1] not in (1, Dk):
            raise ValueError(f"gated_linear_attention: log_decay must be [B,H,T] or [B,H,T,Dk], got {tuple(log_decay.shape)}")
    if state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    return q * scale, log_decay, state


def segsum(g: Tensor) -> Tensor:
    """[.., T, G] -> [.., T, T, G] with out[t, s] = Σ_{s<r≤t} g_r for s ≤ t and -inf above the diagonal.

    Computed as a masked cumulative sum (not a difference of two cumsums), so it is exact and stable.
    """
    T = g.shape[-2]
    x = g.unsqueeze(-2).expand(*g.shape[:-2], T, T, g.shape[-1])  # x[r, s] = g_r
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=g.device), diagonal=-1)
    x = x.masked_fill(~strict[..., None], 0).cumsum(dim=-3)  # Σ_{s<r≤t} g_r at [t, s]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=g.device))
    return x.masked_fill(~causal[..., None], float("-inf"))


def parallel(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None, state: Tensor | None = None,
             scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Materialised form: o_t = Σ_{s≤t} (q_t ⊙ exp(Σ_{s<r≤t} g_r))·k_s v_s + (q_t ⊙ exp(Σ_{r≤t} g_r))ᵀ S_0."""
    q, g, S0 = _prepare(q, k, v, log_decay, state, scale)
    T = q.shape[2]
    if g is None:
        g = q.new_zeros(*q.shape[:3], 1)
    decay = segsum(g).exp()  # [B, H, T, T, G]
    scores = torch.einsum("bhtd,bhtsd,bhsd->bhts", q, decay.expand(-1, -1, -1, -1, q.shape[-1]), k)
    b = g.cumsum(dim=2)  # Σ_{r≤t} g_r
    out = scores @ v + (q * b.exp()) @ S0
    to_end = decay[:, :, T - 1]  # [B, H, T(s), G]: exp(Σ_{s<r≤T} g_r)
    S = b[:, :, -1, :, None].exp() * S0 + (k * to_end).transpose(-1, -2) @ v
    return out, S


def step(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None, state: Tensor | None = None,
         scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """One token: q, k [B, H, Dk], v [B, H, Dv], log_decay [B, H] or [B, H, Dk]."""
    if state is None:
        state = q.new_zeros(*q.shape, v.shape[-1])
    if log_decay is not None:
        if log_decay.dim() == 2:
            log_decay = log_decay.unsqueeze(-1)
        state = log_decay.exp().unsqueeze(-1) * state
    state = state + k.unsqueeze(-1) * v.unsqueeze(-2)
    out = torch.einsum("bhk,bhkv->bhv", q * scale, state)
    return out, state


def intra_chunk_scores(q: Tensor, k: Tensor, b: Tensor | None) -> Tensor:
    """A[t, s] = Σ_d q_td k_sd exp(b_td - b_sd) for s ≤ t, else 0, per chunk: q, k [.., C, D], b [.., C, G]
    the cumulative log decay inside the chunk (G = 1 scalar, G = D per channel, None no decay)."""
    if b is None or b.shape[-1] == 1:
        return _intra_chunk_scalar(q, k, b)
    return _intra_chunk_channel(q, k, b)


def _intra_chunk_scalar(q: Tensor, k: Tensor, b: Tensor | None) -> Tensor:
    """Scores inside chunks for scalar decay: A[t, s] = q_t·k_s · exp(b_t - b_s), s ≤ t. b: [.., C, 1]."""
    C = q.shape[-2]
    scores = q @ k.transpose(-1, -2)
    causal = torch.tril(torch.ones(C, C, dtype=torch.bool, device=q.device))
    if b is None:
        return scores.masked_fill(~causal, 0)
    diff = (b - b.transpose(-1, -2)).to(q.dtype)  # b_t - b_s, formed in b's (higher) precision
    return scores * diff.masked_fill(~causal, float("-inf")).exp()


def _intra_chunk_channel(q: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """Scores inside chunks for per-channel decay: A[t, s] = Σ_d q_td k_sd exp(b_td - b_sd), s ≤ t.

    The chunk is cut into sub-chunks of SUBCHUNK tokens. Between sub-chunks i > j the decay factorises
    through the last position m of sub-chunk j: exp(b_t - b_m) · exp(b_m - b_s), both factors ≤ 1, so the
    block is a plain matmul. Inside a sub-chunk the [c, c, Dk] decay is formed explicitly (small).
    """
    *lead, C, D = q.shape
    c = min(SUBCHUNK, C)
    n = C // c
    qs, ks, bs = (x.reshape(*lead, n, c, D) for x in (q, k, b))
    b_ref = bs[..., -1, :]  # [.., n, D]: cumulative decay at the end of each sub-chunk
    # off-diagonal blocks: rows i (queries) x columns j (keys), valid for i > j
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=q.device), diagonal=-1)
    # q_exp[i, j, t, d] = b_{i,t,d} - b_ref_{j,d}
    q_exp = (bs.unsqueeze(-3) - b_ref.unsqueeze(-2).unsqueeze(-4)).to(q.dtype)  # [.., n(i), n(j), c, D]
    q_exp = q_exp.masked_fill(~lower[..., None, None], float("-inf"))
    q_dec = qs.unsqueeze(-3) * q_exp.exp()  # [.., i, j, c, D]
    k_dec = ks * (b_ref.unsqueeze(-2) - bs).to(q.dtype).exp()  # [.., j, c, D], exponent ≤ 0
    off = q_dec @ k_dec.unsqueeze(-4).transpose(-1, -2)  # [.., i, j, c, c]
    # diagonal blocks
    causal = torch.tril(torch.ones(c, c, dtype=torch.bool, device=q.device))
    diff = (bs.unsqueeze(-2) - bs.unsqueeze(-3)).to(q.dtype).masked_fill(~causal[..., None], float("-inf"))
    diag = torch.einsum("...td,...tsd,...sd->...ts", qs, diff.exp(), ks)  # [.., n, c, c]
    eye = torch.eye(n, dtype=torch.bool, device=q.device)
    blocks = torch.where(eye[..., None, None], diag.unsqueeze(-3), off)  # [.., i, j, c, c]
    return blocks.transpose(-3, -2).reshape(*lead, C, C)


def chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None, state: Tensor | None = None,
            scale: float = 1.0, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunkwise form: intra-chunk by masked matmuls, inter-chunk by a recurrence over chunk states.

    Any T: the tail is padded with k = v = 0 and g = 0, which leaves outputs and the final state unchanged.
    """
    q, g, S = _prepare(q, k, v, log_decay, state, scale)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    C = chunk_size if T >= chunk_size else max(1, T)
    if g is not None and g.shape[-1] > 1 and C > SUBCHUNK:
        C = C - C % SUBCHUNK  # per-channel path needs whole sub-chunks
    pad = (-T) % C
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = None if g is None else F.pad(g, (0, 0, 0, pad))
    N = (T + pad) // C
    q, k, v = (x.reshape(B, H, N, C, x.shape[-1]) for x in (q, k, v))
    if g is None:
        b = None
        q_in, k_out = q, k
        chunk_decay = None
    else:
        # within-chunk cumulative log decay (≤ 0), accumulated in float64: exponents are differences
        # b_t - b_s of these sums, and float32 sums would leave errors of eps·|b| in them
        b = g.reshape(B, H, N, C, g.shape[-1]).to(torch.float64).cumsum(dim=3)
        b_last = b[:, :, :, -1:]  # [B, H, N, 1, G]
        q_in = q * b.to(q.dtype).exp()  # decay from chunk start to t
        k_out = k * (b_last - b).to(q.dtype).exp()  # decay from s to chunk end
        chunk_decay = b_last.squeeze(3).to(q.dtype).exp()  # [B, H, N, G]
    out = intra_chunk_scores(q, k, b) @ v  # [B, H, N, C, Dv]
    updates = k_out.transpose(-1, -2) @ v  # [B, H, N, Dk, Dv]
    states = []
    for n in range(N):
        states.append(S)
        S = (S if chunk_decay is None else chunk_decay[:, :, n, :, None] * S) + updates[:, :, n]
    out = out + q_in @ torch.stack(states, dim=2)
    out = out.reshape(B, H, N * C, Dv)[:, :, :T]
    return out, S
