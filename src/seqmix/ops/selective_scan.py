r"""Mamba's selective scan (S6), Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", §3.2 (Algorithm 2) and §3.3.

Per channel d and state index n (zero-order hold for A, Euler for B, as the reference implementation):

    h_t[d, n] = exp(Δ_t[d] A[d, n]) · h_{t-1}[d, n] + Δ_t[d] B_t[n] x_t[d],     y_t[d] = Σ_n C_t[n] h_t[d, n] + D[d] x_t[d]

Shapes: x, dt (= Δ, already positive) ``[B, T, d]``; A ``[d, N]`` (negative); B, C ``[B, T, N]``; D ``[d]``
or None; state h ``[B, d, N]``. The layout is channel-last (what the mixer's projections produce): every
channel is its own "head" with a one-dimensional value, so there is no separate head axis.

Why the chunked form is a scan and not the masked-matmul (GLA) form. Read as gated linear attention,
S6 has d heads, keys B and queries C of width N, values of width 1 and a *per-(d, n)* decay. The masked
quadratic form (or GLA's sub-chunked per-channel form) then costs C (the chunk length) multiply-adds and
exps per (t, d, n) instead of one, in batched matmuls whose inner dimension is N = 16 and output width 1,
which CPUs run far from peak. The work is inherently O(T·d·N) element-wise (one exp per (t, d, n)), so
the fastest loop-free CPU formulation is a work-efficient parallel scan. Measured on this machine
(1 thread, B=1, d=256, N=16, T=4096, one layer, forward): masked quadratic form with C=16 ≈1000–1500 ms;
this chunked scan ≈60–70 ms; a Python loop over tokens of one fused multiply-add on [B, d, N] with the
chunk's decays precomputed ≈56 ms (a loop over time, which the op contract keeps out of chunked forms). Forward+backward: ≈0.3 s for this form against
≈2 s for autograd through that per-token loop.

* loop over chunks of ``chunk_size`` tokens (the only Python loop), carrying the state h;
* inside a chunk, decays a_t = exp(Δ_t A) ∈ (0, 1] and inputs u_t = Δ_t B_t x_t are formed for the
  chunk only ([B, C, d, N], never for the whole sequence), and all chunk states come from a
  log-depth, O(C)-work associative scan (recursive pairing, see `_scan`). Products of decays are
  products of numbers in (0, 1] — the exp of a non-positive log-space sum — so nothing overflows at any
  length, and there is no exp of a positive number anywhere;
* y_t = C_t · h_t is a batched mat-vec per chunk.

Gradients come from a hand-written backward (`_ChunkedScan`): the adjoint of a linear recurrence is the
same recurrence run backwards, so the backward recomputes each chunk's states from the saved chunk-start
state and runs the same scan in reverse. Training memory is O(T·d + (T/C)·d·N), as in the CUDA kernel,
and the backward is about three forward passes instead of autograd's many small strided copies.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from seqmix.ops.gated_linear_attention import segsum

Tensor = torch.Tensor


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, time_axis: bool) -> None:
    lead = x.shape[:2] if time_axis else x.shape[:1]
    d, N = A.shape
    if dt.shape != x.shape or x.shape[-1] != d or B.shape != (*lead, N) or C.shape != B.shape:
        raise ValueError(f"selective_scan: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)} do not match "
                         f"(expected x, dt [B,{'T,' if time_axis else ''}d], A [d,N], B, C [B,{'T,' if time_axis else ''}N])")


def _skip(y: Tensor, x: Tensor, D: Tensor | None) -> Tensor:
    return y if D is None else y + x * D


def parallel(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
             state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Materialised form (the oracle): for every channel d the L×L mixing matrix

        M_d[t, s] = Σ_n C_t[n] exp(Σ_{s<r≤t} Δ_r[d] A[d, n]) B_s[n] Δ_s[d]     (s ≤ t)

    so y[:, d] = M_d x[:, d] + Σ_n C_t[n] exp(Σ_{r≤t} Δ_r[d] A[d, n]) h_0[d, n]. Memory O(B·T²·d·N).
    """
    _check(x, dt, A, B, C, time_axis=True)
    Bsz, T, d = x.shape
    N = A.shape[1]
    if state is None:
        state = x.new_zeros(Bsz, d, N)
    g = (dt[..., None] * A).reshape(Bsz, T, d * N)  # log decay per (d, n), ≤ 0
    L = segsum(g).exp().reshape(Bsz, T, T, d, N)  # exp(Σ_{s<r≤t} g_r), 0 above the diagonal
    u = dt * x
    y = torch.einsum("btn,btsdn,bsn,bsd->btd", C, L, B, u)
    to_t = g.cumsum(dim=1).exp().reshape(Bsz, T, d, N)  # exp(Σ_{r≤t} g_r)
    y = y + torch.einsum("btn,btdn,bdn->btd", C, to_t, state)
    h = to_t[:, -1] * state + torch.einsum("bsdn,bsn,bsd->bdn", L[:, -1], B, u)
    return _skip(y, x, D), h


def step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
         state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: x, dt [B, d]; B, C [B, N]; state [B, d, N]."""
    _check(x, dt, A, B, C, time_axis=False)
    if state is None:
        state = x.new_zeros(*x.shape, A.shape[1])
    h = torch.addcmul(torch.exp(dt[..., None] * A) * state, (dt * x)[..., None], B[:, None, :])
    y = (h @ C[..., None]).squeeze(-1)
    return _skip(y, x, D), h


def _scan(a: Tensor, u: Tensor, out: Tensor, work: Tensor) -> Tensor:
    """Write all states of h_t = a_t ⊙ h_{t-1} + u_t along dim 1, from h_{-1} = 0, into `out` (inclusive scan).

    Recursive pairing: the pair (2k, 2k+1) composes to one step with decay a_{2k+1} a_{2k} and input
    a_{2k+1} u_{2k} + u_{2k+1}; scanning the T/2 pairs gives the states at odd positions (written straight
    into the odd slots of `out`), and each even position is one step from the odd state before it.
    O(T) work, log2(T) levels, any T, no concatenation; `out` may be `u` itself (every slot is read before
    it is written). The pairs of all levels live in `work` [2, B, ≥T, ..] (fresh allocations of this size
    cost more than the arithmetic on CPU). Used without autograd (see `_ChunkedScan`).
    """
    T = u.shape[1]
    out[:, :1] = u[:, :1]
    if T == 1:
        return out
    even = T - T % 2  # an odd last element is stepped on at the end
    a_e, a_o = a[:, 0:even:2], a[:, 1:even:2]
    a2, u2 = work[:, :, :even // 2].unbind(0)
    torch.mul(a_o, a_e, out=a2)
    torch.addcmul(u[:, 1:even:2], a_o, u[:, 0:even:2], out=u2)
    h_o = _scan(a2, u2, out[:, 1:even:2], work[:, :, even // 2:])
    torch.addcmul(u[:, 2:even:2], a_e[:, 1:], h_o[:, :-1], out=out[:, 2:even:2])
    if even < T:
        torch.addcmul(u[:, -1:], a[:, -1:], out[:, -2:-1], out=out[:, -1:])
    return out


def _scan_reverse(a: Tensor, u: Tensor, out: Tensor, work: Tensor) -> Tensor:
    """`_scan` run backwards in time: out_t = a_t ⊙ out_{t+1} + u_t from out_T = 0, without flipping.

    The pairs are anchored at the end, (T-2-2k, T-1-2k), each composing to decay a_f a_s and input
    u_f + a_f u_s (f, s its first and second position); an odd first element is stepped on at the end.
    """
    T = u.shape[1]
    out[:, -1:] = u[:, -1:]
    if T == 1:
        return out
    o = T % 2
    a_f, a_s = a[:, o::2], a[:, o + 1::2]
    a2, u2 = work[:, :, :T // 2].unbind(0)
    torch.mul(a_f, a_s, out=a2)
    torch.addcmul(u[:, o::2], a_f, u[:, o + 1::2], out=u2)
    h_f = _scan_reverse(a2, u2, out[:, o::2], work[:, :, T // 2:])
    torch.addcmul(u[:, o + 1:T - 1:2], a_s[:, :-1], h_f[:, 1:], out=out[:, o + 1:T - 1:2])
    if o:
        torch.addcmul(u[:, :1], a[:, :1], out[:, 1:2], out=out[:, :1])
    return out


def _chunk_states(dt: Tensor, dtx: Tensor, A: Tensor, B: Tensor, h0: Tensor, a: Tensor, h: Tensor,
                  work: Tensor) -> None:
    """Decays a = exp(Δ A) and states h [B, C, d, N] of one chunk from state h0, into the buffers a and h;
    dtx = Δ ⊙ x."""
    torch.mul(dt[..., None], A, out=a).exp_()
    torch.mul(dtx[..., None], B[:, :, None, :], out=h)  # the inputs u, scanned in place
    h[:, 0].addcmul_(a[:, 0], h0)  # the initial state enters as part of the first input
    _scan(a, h, h, work)


class _ChunkedScan(torch.autograd.Function):
    """(x, dt, A, B, C, h0) -> (Σ_n C_t h_t, h_T), chunk by chunk, with a recomputing backward.

    The [B, C, d, N] work tensors are allocated once and reused by every chunk; per-token work on [B, T, ·]
    tensors is done once for the whole sequence, outside the loop over chunks.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, chunk_size):
        Bsz, T, d = x.shape
        a, h = (x.new_empty(Bsz, min(chunk_size, T), d, A.shape[1]) for _ in range(2))
        work = x.new_empty(2, *a.shape)
        dtx = dt * x
        y = x.new_empty(Bsz, T, d)
        starts, state = [], h0
        for c0 in range(0, T, chunk_size):
            c = slice(c0, c0 + chunk_size)
            n = min(chunk_size, T - c0)
            starts.append(state)
            _chunk_states(dt[:, c], dtx[:, c], A, B[:, c], state, a[:, :n], h[:, :n], work)
            y[:, c] = (C[:, c, None, :] @ h[:, :n].transpose(-1, -2)).squeeze(-2)  # [1,N]@[N,d]: fast GEMM shape
            state = h[:, n - 1].clone()
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(x, dt, A, B, C, torch.stack(starts))
        return y, state

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_last):
        """Per chunk, backwards: with λ_t = dLoss/dh_t and μ_t = a_t λ_t = dLoss/dh_{t-1} through step t,

            μ_t = a_t ⊙ (μ_{t+1} + C_t gy_t)   (a reverse scan; μ_end = dLoss/d(chunk's last state))
            λ_t = C_t gy_t + μ_{t+1},   dLoss/d(Δ_t A) = μ_t ⊙ h_{t-1},   dLoss/du_t = λ_t

        and μ at the chunk's first token is dLoss/d(its initial state), the previous chunk's μ_end.
        """
        x, dt, A, B, C, starts = ctx.saved_tensors
        Q = ctx.chunk_size
        Bsz, T, d = x.shape
        g_next = torch.zeros_like(starts[0]) if g_last is None else g_last  # dLoss/d(state at chunk end)
        if gy is None:
            gy = torch.zeros_like(x)
        dtx = dt * x
        lam_B, gdt_A, gB, gC = x.new_empty(Bsz, T, d), x.new_empty(Bsz, T, d), torch.empty_like(B), torch.empty_like(C)
        gA = torch.zeros_like(A)
        a, h, lam, mu = (x.new_empty(Bsz, min(Q, T), d, A.shape[1]) for _ in range(4))
        work = x.new_empty(2, *a.shape)
        for i in reversed(range(len(starts))):
            c = slice(i * Q, (i + 1) * Q)
            n = min(Q, T - i * Q)
            a_, h_, lam_, mu_ = a[:, :n], h[:, :n], lam[:, :n], mu[:, :n]
            _chunk_states(dt[:, c], dtx[:, c], A, B[:, c], starts[i], a_, h_, work)
            torch.mul(gy[:, c, :, None], C[:, c, None, :], out=lam_)  # direct dLoss/dh_t
            torch.mul(a_, lam_, out=mu_)
            mu_[:, -1].addcmul_(a_[:, -1], g_next)
            _scan_reverse(a_, mu_, mu_, work)
            lam_[:, :-1] += mu_[:, 1:]
            lam_[:, -1] += g_next
            g_next = mu_[:, 0].clone()
            mu_[:, 1:] *= h_[:, :-1]  # μ becomes dLoss/d(Δ_t A)
            mu_[:, 0] *= starts[i]
            lam_B[:, c] = (B[:, c, None, :] @ lam_.transpose(-1, -2)).squeeze(-2)
            gdt_A[:, c] = (mu_ * A).sum(-1)
            gA += (mu_ * dt[:, c, :, None]).sum((0, 1))
            gB[:, c] = (dtx[:, c, None, :] @ lam_).squeeze(-2)
            gC[:, c] = (gy[:, c, None, :] @ h_).squeeze(-2)
        return dt * lam_B, torch.addcmul(gdt_A, x, lam_B), gA, gB, gC, g_next, None


def chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
            state: Tensor | None = None, chunk_size: int = 16) -> tuple[Tensor, Tensor]:
    """Chunked scan (see the module docstring): any T, states of one chunk at a time, O(T·d·N) work."""
    _check(x, dt, A, B, C, time_axis=True)
    if chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size={chunk_size} must be a positive integer")
    if state is None:
        state = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    y, h = _ChunkedScan.apply(x, dt, A, B, C, state, chunk_size)
    return _skip(y, x, D), h
