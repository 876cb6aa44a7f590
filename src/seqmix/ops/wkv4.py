r"""RWKV-4's WKV (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", §3.2, eq. 14):

    wkv_t = (Σ_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u + k_t} v_t) / (Σ_{i<t} e^{-(t-1-i)w + k_i} + e^{u + k_t})

channel by channel, with w > 0 the decay rate (the mixer passes w = exp(time_decay)) and u the bonus of
the current token. Shapes: k, v ``[B, H, T, D]`` (RWKV-4 has no heads: its mixer uses H = 1, D = d_model);
w, u ``[H, D]`` or anything broadcasting to ``[B, H, D]``; output ``[B, H, T, D]``.

State ``(a, b, p)``, each ``[B, H, D]``: the past numerator and denominator as Σ_{i<t} e^{-(t-1-i)w + k_i}
(v_i, 1) = e^p (a, b), with p the largest exponent — the "max trick" of the official kernel, so every
exp is of a non-positive number and nothing overflows however large the keys or long the sequence.
The zero state is a = b = 0, p = -1e38 (finite, unlike -inf, so p - p' never makes a NaN). All arithmetic
and the state are at least float32 (a float16 state would overflow at -1e38); outputs come back in
the input dtype.

Forms: ``parallel`` materialises the [T, T, D] exponents and normalises each row by its maximum
(log-sum-exp style); ``chunked`` does the same inside chunks and carries (a, b, p) across them (WKV-4 is
depthwise — there is no contraction over channels — so the chunk's work is elementwise, O(T·C·D));
``step`` is the official recurrence.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor
State = tuple[Tensor, Tensor, Tensor]

P_INIT = -1e38  # exponent of the empty past


def init_state(batch_size: int, n_heads: int, dim: int, dtype=torch.float32, device=None) -> State:
    """The zero state (a, b, p), each [B, H, D]."""
    zeros = torch.zeros(batch_size, n_heads, dim, dtype=dtype, device=device)
    return zeros, zeros.clone(), torch.full_like(zeros, P_INIT)


def _prepare(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: State | None):
    if k.shape != v.shape:
        raise ValueError(f"wkv4: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    dtype = torch.promote_types(k.dtype, torch.float32)
    lead = (*k.shape[:2], k.shape[-1]) if k.dim() == 4 else k.shape  # [B, H, D]
    w, u = (x.to(dtype).expand(lead) for x in (w, u))
    if state is None:
        state = init_state(*lead, dtype=dtype, device=k.device)
    return k.to(dtype), v.to(dtype), w, u, tuple(s.to(dtype) for s in state)


def _outputs(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: State) -> Tensor:
    """wkv_t for k, v [.., T, D] after the past (a, b, p) [.., D]; w, u [.., D]. Materialises [.., T, T, D]."""
    a0, b0, p0 = state
    T = k.shape[-2]
    t = torch.arange(T, device=k.device)
    lag = (t[:, None] - 1 - t[None, :]).to(k.dtype)  # t-1-i
    e = k.unsqueeze(-3) - lag[..., None] * w[..., None, None, :]  # [.., T(t), T(i), D]
    e = torch.where((t[:, None] == t[None, :])[..., None], (u.unsqueeze(-2) + k).unsqueeze(-2), e)
    e = e.masked_fill((t[None, :] > t[:, None])[..., None], float("-inf"))
    e_past = p0.unsqueeze(-2) - t[:, None].to(k.dtype) * w.unsqueeze(-2)  # the carried past, seen from t
    m = torch.maximum(e.amax(dim=-2), e_past)  # [.., T, D]
    weight = (e - m.unsqueeze(-2)).exp()
    w_past = (e_past - m).exp()
    num = (weight * v.unsqueeze(-3)).sum(dim=-2) + w_past * a0.unsqueeze(-2)
    den = weight.sum(dim=-2) + w_past * b0.unsqueeze(-2)
    return num / den


def _end_state(k: Tensor, v: Tensor, w: Tensor, state: State) -> State:
    """(a, b, p) after the tokens k, v [.., T, D], starting from `state` [.., D]."""
    a0, b0, p0 = state
    T = k.shape[-2]
    lag = torch.arange(T - 1, -1, -1, device=k.device, dtype=k.dtype)  # T-1-i
    e = k - lag[:, None] * w.unsqueeze(-2)
    e_past = p0 - T * w
    p = torch.maximum(e.amax(dim=-2), e_past)
    weight, w_past = (e - p.unsqueeze(-2)).exp(), (e_past - p).exp()
    return (weight * v).sum(dim=-2) + w_past * a0, weight.sum(dim=-2) + w_past * b0, p


def parallel(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: State | None = None) -> tuple[Tensor, State]:
    """Materialised form: every row of exponents normalised by its own maximum."""
    out_dtype = k.dtype
    k, v, w, u, state = _prepare(k, v, w, u, state)
    return _outputs(k, v, w, u, state).to(out_dtype), _end_state(k, v, w, state)


def chunked(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: State | None = None,
            chunk_size: int = 8) -> tuple[Tensor, State]:
    """Chunkwise form: chunk-local end states in one batch, (a, b, p) carried over chunks, then every
    chunk's outputs in one batch from its starting state. A tail shorter than a chunk is done on its own.

    The in-chunk work is C·D exps per token and the carry costs a few small ops per chunk, so small chunks
    win: 8 was fastest on CPU at d_model = 128 (4: about the same, 16: 1.5-2× slower, 32: ~5× slower)."""
    out_dtype = k.dtype
    k, v, w, u, state = _prepare(k, v, w, u, state)
    B, H, T, D = k.shape
    C = min(chunk_size, T)
    N = T // C
    outs = []
    if N:
        kc, vc = (x[:, :, :N * C].reshape(B, H, N, C, D) for x in (k, v))
        wc, uc = w.unsqueeze(2), u.unsqueeze(2)  # broadcast over chunks
        empty = tuple(x.unsqueeze(2) for x in init_state(B, H, D, k.dtype, k.device))
        a_loc, b_loc, p_loc = _end_state(kc, vc, wc, empty)  # chunk-local end states [B, H, N, D]
        starts = []
        a, b, p = state
        # per-chunk slices by unbind: its backward is one stack, not a zero-filled full gradient per chunk
        for a_c, b_c, p_c in zip(a_loc.unbind(2), b_loc.unbind(2), p_loc.unbind(2)):
            starts.append((a, b, p))
            p_new = torch.maximum(p - C * w, p_c)
            e_old, e_loc = (p - C * w - p_new).exp(), (p_c - p_new).exp()
            a = e_old * a + e_loc * a_c
            b = e_old * b + e_loc * b_c
            p = p_new
        state = (a, b, p)
        start = tuple(torch.stack(s, dim=2) for s in zip(*starts))
        outs.append(_outputs(kc, vc, wc, uc, start).reshape(B, H, N * C, D))
    if N * C < T:
        kt, vt = k[:, :, N * C:], v[:, :, N * C:]
        outs.append(_outputs(kt, vt, w, u, state))
        state = _end_state(kt, vt, w, state)
    return torch.cat(outs, dim=2).to(out_dtype), state


def step(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: State | None = None) -> tuple[Tensor, State]:
    """One token, k, v [B, H, D]: the official max-trick recurrence."""
    out_dtype = k.dtype
    k, v, w, u, (a, b, p) = _prepare(k, v, w, u, state)
    e_cur = u + k
    m = torch.maximum(p, e_cur)
    e1, e2 = (p - m).exp(), (e_cur - m).exp()
    out = (e1 * a + e2 * v) / (e1 * b + e2)
    e_old = p - w
    m = torch.maximum(e_old, k)
    e1, e2 = (e_old - m).exp(), (k - m).exp()
    return out.to(out_dtype), (e1 * a + e2 * v, e1 * b + e2, m)
