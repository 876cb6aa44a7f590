r"""The generalised delta rule: a diagonal-plus-rank-one transition per token.

    S_t = (diag(w_t) + b_t a_tᵀ) S_{t-1} + k_t v_tᵀ,        o_t = S_tᵀ (scale · q_t)

with w_t = exp(log_w_t) ∈ (0, 1], and S ``[B, H, Dk, Dv]`` (the layout of the gated-linear-attention core;
written in RWKV-7's value-by-key layout this is S_t = S_{t-1}(diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ, RWKV-7
paper, Peng et al. 2025, §4). Note a_tᵀ reads the state *before* decay. Special cases:

* RWKV-7: a = -κ̂, b = κ̂ ⊙ α (κ̂ the normalised removal key, α the in-context learning rate);
* DeltaNet (Schlag et al. 2021; Yang et al. 2024), S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ:
  log_w = None, a = -k, b = β k, v ← β v;
* gated DeltaNet (Yang, Kautz, Hatamizadeh 2025), S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ with
  α_t = e^{g_t} one scalar per head: log_w = g, a = -k, b = e^{g} β k, v ← β v. Because a reads the state
  before the decay, b must carry the decay: b = β k would give α_t S_{t-1} - β_t k_t k_tᵀ S_{t-1} instead;
* Kimi Delta Attention, S_t = (I - β_t k_t k_tᵀ) diag(α_t) S_{t-1} + β_t k_t v_tᵀ with a per-channel α_t:
  log_w = log α (per channel), a = -α ⊙ k, b = β k, v ← β v (here the decay is applied before the read, so
  it goes into a).

Shapes: q, k, a, b ``[B, H, T, Dk]``, v ``[B, H, T, Dv]``, log_w ``None`` (no decay), ``[B, H, T]`` (one per
head) or ``[B, H, T, Dk]`` (per key channel). Output ``[B, H, T, Dv]``.

Forms:

* ``parallel`` — the L×L matrix mixer o_t = Σ_{s≤t} (q_tᵀ P_{t,s} k_s) v_s + (P_{t,0}ᵀ q_t)ᵀ S_0 with the
  transition products P_{t,s} = M_t ⋯ M_{s+1}, M_t = diag(w_t) + b_t a_tᵀ. Products of non-commuting
  matrices have no closed form, so the oracle builds them by a sequential product over t (a loop over time,
  O(T²·Dk) memory): exact and obviously right, for tests only.
* ``chunked`` — the WY/UT chunkwise algorithm (Yang et al. 2024, "Parallelizing Linear Transformers with
  the Delta Rule over Sequence Length", §3). Inside a chunk the state read u_t = S_{t-1}ᵀ a_t obeys a unit
  lower-triangular system (I - L) U = A S_0 + L_k V, solved once per chunk (by a batched recursive-doubling
  inverse); everything else is matmuls with decays applied as exp of non-positive log-space sums (the GLA
  core's intra-chunk scores, all four score matrices of a chunk in one call); a loop runs over chunks only.
  Chunks are a power of two long (both block algorithms halve them).
* ``step`` — one token.

``gated_chunked`` (the gated rule's own chunked form) runs on seqmix's CPU kernel outside autograd
(``ops.head_decay``: the same algorithm one key head at a time with each chunk's work in cache), and in torch
operations otherwise or where the kernel cannot be built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from seqmix.ops import gated_linear_attention as gla
from seqmix.ops import head_decay

Tensor = torch.Tensor


def _prepare(q, k, v, a, b, log_w, state, scale):
    B, H, T, Dk = q.shape
    if k.shape != q.shape or a.shape != q.shape or b.shape != q.shape or v.shape[:3] != (B, H, T):
        raise ValueError(f"delta_rule: q {tuple(q.shape)}, k {tuple(k.shape)}, a {tuple(a.shape)}, "
                         f"b {tuple(b.shape)}, v {tuple(v.shape)} do not match")
    if log_w is not None:
        if log_w.dim() == 3:
            log_w = log_w.unsqueeze(-1)
        if log_w.shape[:3] != (B, H, T) or log_w.shape[-1] not in (1, Dk):
            raise ValueError(f"delta_rule: log_w must be [B,H,T] or [B,H,T,Dk], got {tuple(log_w.shape)}")
    if state is None:
        state = q.new_zeros(B, H, Dk, v.shape[-1])
    return q * scale, log_w, state


def parallel(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor | None = None,
             state: Tensor | None = None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Materialised matrix mixer, the transition products built by a sequential product (test oracle)."""
    q, g, S0 = _prepare(q, k, v, a, b, log_w, state, scale)
    T = q.shape[2]
    keys = q.new_zeros(*q.shape[:2], q.shape[-1], T)  # column s holds P_{t,s} k_s (0 for s > t)
    past = S0  # P_{t,0} S_0
    onehot = torch.eye(T, dtype=q.dtype, device=q.device)
    rows, reads = [], []
    for t in range(T):
        w_t = 1.0 if g is None else g[:, :, t].exp().unsqueeze(-1)
        a_t, b_t = a[:, :, t].unsqueeze(-2), b[:, :, t].unsqueeze(-1)
        keys = w_t * keys + b_t * (a_t @ keys) + k[:, :, t].unsqueeze(-1) * onehot[t]
        past = w_t * past + b_t * (a_t @ past)
        rows.append(q[:, :, t].unsqueeze(-2) @ keys)
        reads.append(q[:, :, t].unsqueeze(-2) @ past)
    mixer = torch.cat(rows, dim=2)  # [B, H, T, T], lower triangular
    return mixer @ v + torch.cat(reads, dim=2), keys @ v + past


def _earlier(x: Tensor) -> Tensor:
    """x moved one position earlier inside each chunk (zero last row)."""
    return F.pad(x[..., 1:, :], (0, 0, 0, 1))


def _chunk_scores(q: Tensor, k: Tensor, a: Tensor, b: Tensor, G: Tensor | None):
    """The four score matrices of a chunk, in one call of the GLA core's intra-chunk kernel:

        L_x[t, i] = Σ_d a_td x_id e^{E_td - G_id} (i < t),   Q_x[t, i] = Σ_d q_td x_id e^{G_td - G_id} (i ≤ t)

    for x = b, k. Since E_t = G_{t-1}, row t of L_x is row t-1 of the inclusive score of a moved one
    position earlier against x: every score uses the one decay G, with no exp(-g) factors, so the two
    queries (a moved earlier, q) and two keys (b, k) of each position are scored together.
    """
    scores = gla.grouped_intra_chunk_scores(torch.stack([_earlier(a), q], dim=-2), torch.stack([b, k], dim=-2), G)
    (L_b, L_k), (Q_b, Q_k) = (kind.unbind(-3) for kind in scores.unbind(-4))
    return F.pad(L_b[..., :-1, :], (0, 0, 1, 0)), F.pad(L_k[..., :-1, :], (0, 0, 1, 0)), Q_b, Q_k


def _diagonal_blocks(M: Tensor, s: int) -> Tensor:
    """View [.., C/s, s, s] of the s×s diagonal blocks of M [.., C, C]."""
    n = M.shape[-1] // s
    return M.unflatten(-1, (n, s)).unflatten(-3, (n, s)).diagonal(dim1=-4, dim2=-2).movedim(-1, -3)


def _unit_lower_inverse(L: Tensor) -> Tensor:
    """(I - L)⁻¹ for L [.., C, C] strictly lower triangular, C a power of two, by recursive doubling, all matrices
    at once: with the inverses T_e, T_l of the two s×s diagonal blocks of a 2s-block known, its lower-left block
    is T_l L_{le} T_e. That is log2(C) batched matmul levels (the same blocks as the GLA core's per-channel
    scores), where LAPACK's triangular solve loops over the matrices one at a time."""
    C = L.shape[-1]
    inverse = torch.zeros_like(L)
    inverse.diagonal(dim1=-2, dim2=-1).fill_(1)
    s = 1
    while s < C:
        blocks = _diagonal_blocks(inverse, s)
        early, late = blocks[..., 0::2, :, :], blocks[..., 1::2, :, :]
        gla.level_blocks(inverse, s).copy_(gla.thin_matmul(gla.thin_matmul(late, gla.level_blocks(L, s)), early))
        s *= 2
    return inverse


class _UnitLowerSolve(torch.autograd.Function):
    """X = (I - L)⁻¹ R for L [.., C, C] strictly lower triangular, C a power of two, R [.., C, D]: the inverse
    by ``_unit_lower_inverse``, then one product. Backward: dR = T⁻ᵀ dX, dL = tril(dR Xᵀ)."""

    @staticmethod
    def forward(ctx, L, R):
        inverse = _unit_lower_inverse(L)
        X = inverse @ R
        ctx.save_for_backward(inverse, X)
        return X

    @staticmethod
    @once_differentiable
    def backward(ctx, dX):
        inverse, X = ctx.saved_tensors
        dR = inverse.transpose(-1, -2) @ dX
        return (dR @ X.transpose(-1, -2)).tril(-1), dR


class _UnitLowerInverse(torch.autograd.Function):
    """T = (I - L)⁻¹ for L [.., C, C] strictly lower triangular (``_unit_lower_inverse``), for a system solved
    with several right-hand sides, some known only later. Backward: dT = T dL T, so dL = tril(Tᵀ dT Tᵀ)."""

    @staticmethod
    def forward(ctx, L):
        inverse = _unit_lower_inverse(L)
        ctx.save_for_backward(inverse)
        return inverse

    @staticmethod
    @once_differentiable
    def backward(ctx, dT):
        inverse_t = ctx.saved_tensors[0].transpose(-1, -2)
        return (inverse_t @ dT @ inverse_t).tril(-1)


def chunked(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor | None = None,
            state: Tensor | None = None, scale: float = 1.0, chunk_size: int = 32) -> tuple[Tensor, Tensor]:
    """WY/UT chunkwise form. Within a chunk (G the inclusive, E the exclusive cumulative log decay):

        u_t = S_{t-1}ᵀ a_t = (a_t ⊙ e^{E_t})ᵀ S_0 + Σ_{i<t} L_b[t,i] u_i + L_k[t,i] v_i
          =>  U = W S_0 + Ũ,  W = (I - L_b)⁻¹ (A ⊙ e^E),  Ũ = (I - L_b)⁻¹ L_k V
        O = (Q ⊙ e^G + Q_b W) S_0 + Q_b Ũ + Q_k V
        S_end = (diag(e^{G_C}) + (B ⊙ e^{G_C - G})ᵀ W) S_0 + (B ⊙ e^{G_C - G})ᵀ Ũ + (K ⊙ e^{G_C - G})ᵀ V

    L_x[t,i] = Σ_d a_td x_id e^{E_td - G_id} (i < t), Q_x[t,i] = Σ_d q_td x_id e^{G_td - G_id} (i ≤ t).
    Any T: the tail is padded with q = k = v = a = b = 0 and log_w = 0, i.e. M = I, which changes nothing.
    """
    q, g, S = _prepare(q, k, v, a, b, log_w, state, scale)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    C = gla.chunk_length(T, chunk_size, power_of_two=True)  # the block solve and scores halve chunks
    pad = (-T) % C
    if pad:
        q, k, v, a, b = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, a, b))
        g = None if g is None else F.pad(g, (0, 0, 0, pad))
    N = (T + pad) // C
    q, k, v, a, b = (x.reshape(B, H, N, C, x.shape[-1]) for x in (q, k, v, a, b))
    if g is None:
        G = E = None
        a_dec, q_dec, b_end, k_end, chunk_decay = a, q, b, k, None
    else:
        G = g.reshape(B, H, N, C, g.shape[-1]).cumsum(dim=3)  # ≤ 0, non-increasing
        E = F.pad(G[..., :-1, :], (0, 0, 1, 0))
        to_end = (G[..., -1:, :] - G).exp()
        a_dec, q_dec, b_end, k_end = a * E.exp(), q * G.exp(), b * to_end, k * to_end
        chunk_decay = G[..., -1, :].exp().unsqueeze(-1)  # [B, H, N, Dk or 1, 1]
    L_b, L_k, Q_b, Q_k = _chunk_scores(q, k, a, b, G)
    solved = _UnitLowerSolve.apply(L_b, torch.cat([a_dec, L_k @ v], dim=-1))
    W, U_local = solved.split([Dk, Dv], dim=-1)
    out = Q_b @ U_local + Q_k @ v
    q_state = q_dec + Q_b @ W  # how each position reads the chunk's initial state
    b_end_t = b_end.transpose(-1, -2)
    transition = b_end_t @ W  # low-rank part of the chunk's transition, [B, H, N, Dk, Dk]
    inputs = b_end_t @ U_local + k_end.transpose(-1, -2) @ v  # [B, H, N, Dk, Dv]
    decays = [None] * N if chunk_decay is None else chunk_decay.unbind(2)  # unbind: see gla.chunked
    starts = []
    for decay, trans, inp in zip(decays, transition.unbind(2), inputs.unbind(2)):
        starts.append(S)
        S = (S if decay is None else decay * S) + trans @ S + inp
    out = out + q_state @ torch.stack(starts, dim=2)
    return out.reshape(B, H, N * C, Dv)[:, :, :T], S


def step(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor | None = None,
         state: Tensor | None = None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """One token: q, k, a, b [B, H, Dk], v [B, H, Dv], log_w None, [B, H] or [B, H, Dk]."""
    if state is None:
        state = q.new_zeros(*q.shape, v.shape[-1])
    read = a.unsqueeze(-2) @ state  # a_tᵀ S_{t-1}, before the decay
    decayed = state
    if log_w is not None:
        decayed = (log_w.unsqueeze(-1) if log_w.dim() == 2 else log_w).exp().unsqueeze(-1) * state
    state = torch.addcmul(torch.addcmul(decayed, b.unsqueeze(-1), read), k.unsqueeze(-1), v.unsqueeze(-2))
    out = ((q * scale).unsqueeze(-2) @ state).squeeze(-2)
    return out, state


def gated_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None = None,
                  state: Tensor | None = None, scale: float = 1.0, chunk_size: int = 64,
                  span: int = 512) -> tuple[Tensor, Tensor]:
    """The gated delta rule S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = S_tᵀ (scale · q_t), chunked
    with its own structure: the removal and the write share the key, so one triangular system per chunk
    replaces the general form's two score pairs and [Dk, Dk] transitions (about half the arithmetic).

    Inside a chunk from S_0, with G_t = Σ_{s≤t} log α_s: α_t S_{t−1} = e^{G_t} S_0 + Σ_{s<t} e^{G_t−G_s} k_s u_sᵀ, so
    S_t = e^{G_t} S_0 + Σ_{s≤t} e^{G_t−G_s} k_s u_sᵀ with the written values u_t = β_t (v_t − (α_t S_{t−1})ᵀ k_t):

        (I + A) U = β V − (β e^G K) S_0,   A[t, s] = β_t e^{G_t−G_s} k_tᵀ k_s  (s < t)
        U = Ũ − W S_0,   Ũ = (I + A)⁻¹ β V,   W = (I + A)⁻¹ (β e^G K)      (the chunks of a span at once)
        O = (e^G Q) S_0 + (Q Kᵀ ⊙ e^{G_t−G_s})_{s≤t} U,   S_end = e^{G_C} S_0 + (e^{G_C−G} K)ᵀ U    (chunk by chunk)

    Every exponent is ≤ 0. q, k [B, Hk, T, Dk], v [B, H, T, Dv] with Hk dividing H: each query/key head serves
    H / Hk consecutive value heads (grouped heads; their K Kᵀ and Q Kᵀ are computed once per key head);
    beta [B, H, T], log_alpha [B, H, T] (≤ 0) or None (DeltaNet). Output [B, H, T, Dv] (a view of [B, T, H, Dv]
    memory, so merging the heads is free), final state [B, H, Dk, Dv]. The sequence is taken ``span`` tokens
    at a time (a multiple of the chunk), so the intermediates are [B, H, span, ·] and stay in cache instead of
    being allocated at the sequence's length. Equal to ``chunked(q, k, β v, −k, e^{log α} β k, log α)``, the
    general form's mapping (with q, k repeated over their value heads).
    """
    B, Hk, T, Dk = q.shape
    H, Dv = v.shape[1], v.shape[-1]
    if k.shape != q.shape or v.shape[0] != B or v.shape[2] != T or H % Hk or beta.shape != (B, H, T) or (
            log_alpha is not None and log_alpha.shape != (B, H, T)):
        raise ValueError(f"delta_rule.gated_chunked: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"beta {tuple(beta.shape)}, log_alpha "
                         f"{None if log_alpha is None else tuple(log_alpha.shape)} do not match")
    C = gla.chunk_length(T, chunk_size, power_of_two=True)  # the recursive-doubling solve halves chunks
    if head_decay.takes(q, k, v, beta, log_alpha, state):
        return head_decay.run(q, k, v, beta, log_alpha, state, scale, C)
    span = max(C, span // C * C)
    S = (q.new_zeros(B, H, Dk, Dv) if state is None else state).flatten(0, 1)
    g = q.new_zeros(B, H, T) if log_alpha is None else log_alpha
    outs = []
    for i in range(0, T, span):
        j = min(i + span, T)
        S = _gated_span(q[:, :, i:j], k[:, :, i:j], v[:, :, i:j], beta[:, :, i:j], g[:, :, i:j], S, scale, C, outs)
    o = torch.stack([o.view(B, H, C, Dv).transpose(1, 2) for o in outs], dim=1)  # [B, N, C, H, Dv]
    return o.flatten(1, 2)[:, :T].transpose(1, 2), S.view(B, H, Dk, Dv)


def _gated_span(q, k, v, beta, g, S, scale, C, outs):
    """``gated_chunked`` over one span from the state S [B·H, Dk, Dv]: appends each chunk's output
    [B·H, C, Dv] to ``outs`` and returns the span's final state. Heads are laid out [B, Hk, H / Hk, ...], the
    query/key tensors with 1 in the middle, so they broadcast over the value heads they serve.

    With T = (I + A)⁻¹ the chunk's written values are U = T β V − T (β e^G K) S_0: the first term for all chunks
    at once, the second inside the loop from the same product that reads the state for the output,
    [e^G Q; β e^G K] S_0 (so neither W = T β e^G K nor a concatenation of the right-hand sides is formed)."""
    B, Hk, T, Dk = q.shape
    H, Dv = v.shape[1], v.shape[-1]
    pad = (-T) % C
    if pad:  # padding with k = v = β = 0 and log α = 0 changes nothing
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta, g = F.pad(beta, (0, pad)), F.pad(g, (0, pad))
    N = (T + pad) // C
    heads = (B, Hk, H // Hk, N, C)
    qk = torch.cat([(q * scale).reshape(B, Hk, 1, N, C, Dk), k.reshape(B, Hk, 1, N, C, Dk)], dim=-2)  # [Q; K]
    k = qk[..., C:, :]
    q_kt, k_kt = (qk @ k.transpose(-1, -2)).split(C, dim=-2)  # Q Kᵀ, K Kᵀ per key head, [B, Hk, 1, N, C, C]
    G = g.reshape(heads).cumsum(-1)  # ≤ 0, non-increasing within a chunk
    beta = beta.reshape(*heads, 1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill_(~causal, float("-inf")).exp_()  # e^{G_t−G_s}, s ≤ t
    e_G = G.exp()[..., None]
    inverse = _UnitLowerInverse.apply(k_kt * decay * -beta)  # T; it reads A's strictly lower triangle only
    U_local = (inverse * beta.transpose(-1, -2) @ v.reshape(*heads, Dv)).flatten(0, 2)  # T β V, [B·H, N, C, Dv]
    inverse = inverse.flatten(0, 2)
    read = (qk * torch.cat([e_G, beta * e_G], dim=-2)).flatten(0, 2)  # [e^G Q; β e^G K], [B·H, N, 2C, Dk]
    scores = (q_kt * decay).flatten(0, 2)
    k_to_end = (k * (G[..., -1:] - G).exp()[..., None]).flatten(0, 2).transpose(-1, -2)  # [B·H, N, Dk, C]
    chunk_decay = e_G[..., -1:, :].flatten(0, 2)  # [B·H, N, 1, 1]
    for n in range(N):
        q_S, k_S = (read[:, n] @ S).split(C, dim=-2)
        U = torch.baddbmm(U_local[:, n], inverse[:, n], k_S, alpha=-1)
        outs.append(torch.baddbmm(q_S, scores[:, n], U))
        S = (chunk_decay[:, n] * S).baddbmm_(k_to_end[:, n], U)
    return S
