r"""Gated linear attention: the shared core of linear attention, RetNet, GLA, Mamba-2 (SSD), mLSTM, RWKV-5/6.

Recurrence (Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training"):

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,        o_t = S_tᵀ (scale · q_t)

with α_t = exp(g_t) ∈ (0, 1]. ``log_decay`` g is per head ``[B, H, T]`` (scalar decay: RetNet, Mamba-2,
mLSTM) or per key channel ``[B, H, T, Dk]`` (GLA, RWKV-6), or ``None`` for no decay (linear attention).
Shapes: q, k ``[B, H, T, Dk]``, v ``[B, H, T, Dv]``, state S ``[B, H, Dk, Dv]``.

Numerics: decays are only ever applied as exp of a *non-positive* log-space sum
(b_t - b_s with s ≤ t, where b is a cumulative sum of g ≤ 0), so nothing overflows at any length.

Per-channel decay inside a chunk has no single-matmul form (the decay depends on t, s and the channel);
`_ChannelScores` covers the chunk's pairs by recursive halving, each level a batched matmul whose decay
factorises through the midpoint of a block, so no [C, C, Dk] tensor is ever formed.

With one decay per head, or none, ``chunked`` runs on seqmix's CPU kernel outside autograd (``ops.head_decay``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from seqmix.ops import head_decay

Tensor = torch.Tensor

def _checked_decay(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None) -> Tensor | None:
    """The shapes checked; log_decay as [B, H, T, 1] or [B, H, T, Dk]."""
    B, H, T, Dk = q.shape
    if k.shape != q.shape or v.shape[:3] != (B, H, T):
        raise ValueError(f"gated_linear_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if log_decay is not None:
        if log_decay.dim() == 3:
            log_decay = log_decay.unsqueeze(-1)
        if log_decay.shape[:3] != (B, H, T) or log_decay.shape[-1] not in (1, Dk):
            raise ValueError(f"gated_linear_attention: log_decay must be [B,H,T] or [B,H,T,Dk], got {tuple(log_decay.shape)}")
    return log_decay


def _prepare(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, state: Tensor | None, scale: float):
    log_decay = _checked_decay(q, k, v, log_decay)
    B, H, T, Dk = q.shape
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
    state = torch.addcmul(state, k.unsqueeze(-1), v.unsqueeze(-2))
    out = ((q * scale).unsqueeze(-2) @ state).squeeze(-2)  # a batched mat-vec; einsum's parsing costs more here
    return out, state


def intra_chunk_scores(q: Tensor, k: Tensor, b: Tensor | None) -> Tensor:
    """A[t, s] = Σ_d q_td k_sd exp(b_td - b_sd) for s ≤ t, else 0, per chunk: q, k [.., C, D], b [.., C, G]
    the cumulative log decay inside the chunk (G = 1 scalar, G = D per channel, None no decay)."""
    if b is None or b.shape[-1] == 1:
        return _intra_chunk_scalar(q, k, b)
    return _intra_chunk_channel(q[..., None, :], k[..., None, :], b)[..., 0, 0, :, :]


def grouped_intra_chunk_scores(q: Tensor, k: Tensor, b: Tensor | None) -> Tensor:
    """`intra_chunk_scores` of X queries and Y keys per position that share its decay, in one call (as the
    delta rule needs): q [.., C, X, D], k [.., C, Y, D] -> A [.., X, Y, C, C] with
    A[i, j, t, s] = Σ_d q_tid k_sjd exp(b_td - b_sd) for s ≤ t."""
    if b is None or b.shape[-1] == 1:
        return _intra_chunk_scalar(q.movedim(-2, -3).unsqueeze(-3), k.movedim(-2, -3).unsqueeze(-4),
                                   None if b is None else b[..., None, None, :, :])
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


def _late(z: Tensor, s: int, dim: int) -> Tensor:
    """The later half of every 2s-block of positions along `dim` (negative): [.., C, ..] -> [.., C/2s, s, ..]."""
    return z.unflatten(dim, (z.shape[dim] // (2 * s), 2, s)).select(dim - 1, 1)


def _early(z: Tensor, s: int, dim: int) -> Tensor:
    """The earlier half of every 2s-block of positions along `dim` (negative)."""
    return z.unflatten(dim, (z.shape[dim] // (2 * s), 2, s)).select(dim - 1, 0)


def level_blocks(A: Tensor, s: int) -> Tensor:
    """View [.., P, s, s] of the blocks of A [.., C, C] that level s fills: for each pair p of sub-blocks of
    s positions, rows of the later one (queries) × columns of the earlier one (keys)."""
    P = A.shape[-1] // (2 * s)
    grid = A.unflatten(-1, (P, 2 * s)).unflatten(-3, (P, 2 * s))  # [.., P, 2s, P, 2s]
    return grid.diagonal(dim1=-4, dim2=-2)[..., s:, :s, :].movedim(-1, -3)


def _decayed_halves(x: Tensor, y: Tensor, b: Tensor, s: int):
    """At level s: the later half of every 2s-block of x and the earlier half of y, each decayed to the
    block's midpoint m (the earlier half's last position), x ⊙ exp(b - b_m) and y ⊙ exp(b_m - b), as
    [.., P, s·X, D] and [.., P, s·Y, D]; and the two factors [.., P, s, 1, D]. b is non-increasing, so both
    exponents are ≤ 0."""
    b_mid = _early(b, s, -2)[..., -1:, :]
    f_late = (_late(b, s, -2) - b_mid).to(x.dtype).exp().unsqueeze(-2)
    f_early = (b_mid - _early(b, s, -2)).to(x.dtype).exp().unsqueeze(-2)
    x_late = (_late(x, s, -3) * f_late).flatten(-3, -2)
    y_early = (_early(y, s, -3) * f_early).flatten(-3, -2)
    return x_late, y_early, f_late, f_early


def thin_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b; for an inner dimension ≤ 4 as a sum of rank-one products, which is several times faster on
    CPU than batched GEMM of such thin matrices (measured: 0.5 vs 1.4 ms for 2×2 @ 2×20 blocks)."""
    if a.shape[-1] > 4:
        return a @ b
    out = a[..., :1] * b[..., :1, :]
    for j in range(1, a.shape[-1]):
        out.addcmul_(a[..., j:j + 1], b[..., j:j + 1, :])
    return out


class _ChannelScores(torch.autograd.Function):
    """A[i, j, t, s] = Σ_d x_tid y_sjd exp(b_td - b_sd) for s ≤ t by recursive halving: x [.., C, X, D],
    y [.., C, Y, D], b [.., C, D], C a power of two; A [.., X, Y, C, C].

    Every pair t > s is covered exactly once: at the level s' = the highest bit where t and s differ, t lies
    in the later and s in the earlier half of one 2s'-block, and the decay factorises through the block's
    midpoint m: exp(b_t - b_m) · exp(b_m - b_s), both ≤ 1, so the block is one matmul (of all X·Y kinds at
    once). log2(C) levels of half-sized element-wise work and matmuls; no [C, C, D] tensor. The backward
    runs the same levels (the graph autograd would record, slices and selects of the inputs, costs more
    than the work), with ∂A/∂b folded into db_t = Σ_i x_ti ⊙ dx_ti - Σ_j y_tj ⊙ dy_tj: the midpoint's
    factors cancel.
    """

    @staticmethod
    def forward(ctx, x, y, b):
        *lead, C, X, _ = x.shape
        Y = y.shape[-2]
        A = x.new_zeros(*lead, X, Y, C, C)
        A.diagonal(dim1=-2, dim2=-1).copy_((x @ y.transpose(-1, -2)).movedim(-3, -1))
        s = 1
        while s < C:
            x_late, y_early, _, _ = _decayed_halves(x, y, b, s)
            block = x_late @ y_early.transpose(-1, -2)  # [.., P, s·X, s·Y]
            level_blocks(A, s).copy_(block.unflatten(-1, (s, Y)).unflatten(-3, (s, X)).permute(
                *range(block.dim() - 3), -3, -1, -5, -4, -2))  # -> [.., X, Y, P, s, s]
            s *= 2
        ctx.save_for_backward(x, y, b)
        return A

    @staticmethod
    @once_differentiable
    def backward(ctx, dA):
        x, y, b = ctx.saved_tensors
        C, X, Y = x.shape[-3], x.shape[-2], y.shape[-2]
        dA_diag = dA.diagonal(dim1=-2, dim2=-1).movedim(-1, -3)  # [.., C, X, Y]
        dx, dy = thin_matmul(dA_diag, y), thin_matmul(dA_diag.transpose(-1, -2), x)
        n = dA.dim() - 4
        s = 1
        while s < C:
            x_late, y_early, f_late, f_early = _decayed_halves(x, y, b, s)
            dA_level = level_blocks(dA, s).permute(*range(n), n + 2, n + 3, n, n + 4, n + 1).flatten(-2, -1)
            dA_level = dA_level.flatten(-3, -2)  # [.., P, s·X, s·Y], a copy
            _late(dx, s, -3).addcmul_(thin_matmul(dA_level, y_early).unflatten(-2, (s, X)), f_late)
            _early(dy, s, -3).addcmul_(thin_matmul(dA_level.transpose(-1, -2), x_late).unflatten(-2, (s, Y)),
                                       f_early)
            s *= 2
        db = ((x * dx).sum(-2) - (y * dy).sum(-2)).to(b.dtype)
        return dx, dy, db


def _intra_chunk_channel(q: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """Grouped scores inside chunks for per-channel decay (q [.., C, X, D], k [.., C, Y, D] -> [.., X, Y, C, C]),
    for a chunk length C that is a power of two (see `chunk_length`). See `_ChannelScores`."""
    C = q.shape[-3]
    if C & (C - 1):
        raise ValueError(f"gated_linear_attention: per-channel scores need a power-of-two chunk, got {C}")
    return _ChannelScores.apply(q, k, b)


def chunk_length(T: int, chunk_size: int, power_of_two: bool) -> int:
    """The chunk length for T tokens: chunk_size, or T when shorter. With ``power_of_two`` (what the
    recursive halving of the per-channel scores needs) the largest power of two ≤ chunk_size, or the
    smallest ≥ T when that is shorter."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive integer")
    if not power_of_two:
        return min(chunk_size, max(1, T))
    return min(1 << (chunk_size.bit_length() - 1), 1 << (max(1, T) - 1).bit_length())


def chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None, state: Tensor | None = None,
            scale: float = 1.0, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunkwise form: intra-chunk by masked matmuls, inter-chunk by a recurrence over chunk states.

    Any T: the tail is padded with k = v = 0 and g = 0, which leaves outputs and the final state unchanged.
    """
    g = _checked_decay(q, k, v, log_decay)
    per_channel = g is not None and g.shape[-1] > 1
    C = chunk_length(q.shape[2], chunk_size, power_of_two=per_channel)
    if not per_channel and head_decay.takes(q, k, v, g, state):
        return head_decay.run(q, k, v, None, None if g is None else g[..., 0], state, scale, C)
    q, g, S = _prepare(q, k, v, log_decay, state, scale)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
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
    # per-chunk slices by unbind, not indexing: its backward is one stack instead of a zero-filled
    # full-size gradient per chunk (O(N²) memory traffic)
    decays = [None] * N if chunk_decay is None else chunk_decay.unsqueeze(-1).unbind(2)
    states = []
    for decay, update in zip(decays, updates.unbind(2)):
        states.append(S)
        S = (S if decay is None else decay * S) + update
    out = out + q_in @ torch.stack(states, dim=2)
    out = out.reshape(B, H, N * C, Dv)[:, :, :T]
    return out, S
