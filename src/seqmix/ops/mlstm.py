r"""mLSTM: xLSTM's matrix memory with exponential gating (Beck et al. 2024, "xLSTM", §2.3, appendix A.3):

    C_t = f_t C_{t-1} + i_t k_t v_tᵀ,   n_t = f_t n_{t-1} + i_t k_t,   h̃_t = C_tᵀ q_t / max(|n_tᵀ q_t|, 1)

with i_t = exp(ĩ_t) (``log_i``) and f_t = exp(``log_f``): the mixer passes logsigmoid(f̃) for a sigmoid
forget gate or f̃ itself for an exponential one. Shapes: q, k ``[B, H, T, Dk]``, v ``[B, H, T, Dv]``,
log_i, log_f ``[B, H, T]``; output ``[B, H, T, Dv]``.

Stabilisation (as the reference code): the state is (C, n, m) with C, n the true memory and normaliser
times exp(-m_t), m_t = max(log f_t + m_{t-1}, ĩ_t) the running maximum of the log weights (m_0 = 0 in the
zero state), and

    h̃_t = C_tᵀ q_t / (max(|n_tᵀ q_t|, exp(-m_t)) + eps)

which is the formula above in stabilised units, plus the reference's eps. Every exp is of a non-positive
number, so exponential gates never overflow. Shapes of the state: C ``[B, H, Dk, Dv]``, n ``[B, H, Dk]``,
m ``[B, H]``. All forms use this same m_t (in ``parallel`` and ``chunked`` it is the row maximum over the
tokens *and* the carried state, which equals the running maximum), so they agree to rounding, eps included.

Why not the GLA core: GLA applies a fixed exp(g) ≤ 1 decay and unit key weights; mLSTM's weights
exp(Σ log f + ĩ_s) may grow without bound, and each row must be rescaled by its own exp(-m_t) before it is
summed. GLA's chunked form has no per-row rescaling to carry, so the (scalar-decay, hence cheap) [C, C]
log-weight matrix of each chunk is formed here, as in the reference chunkwise kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.ops import gated_linear_attention as gla

Tensor = torch.Tensor
State = tuple[Tensor, Tensor, Tensor]


def init_state(batch_size: int, n_heads: int, dk: int, dv: int, dtype=torch.float32, device=None) -> State:
    """The zero state (C, n, m) = (0, 0, 0)."""
    return (torch.zeros(batch_size, n_heads, dk, dv, dtype=dtype, device=device),
            torch.zeros(batch_size, n_heads, dk, dtype=dtype, device=device),
            torch.zeros(batch_size, n_heads, dtype=dtype, device=device))


def _prepare(q, k, v, log_i, log_f, state, scale):
    B, H, T, Dk = q.shape
    if k.shape != q.shape or v.shape[:3] != (B, H, T) or log_i.shape != (B, H, T) or log_f.shape != (B, H, T):
        raise ValueError(f"mlstm: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"log_i {tuple(log_i.shape)}, log_f {tuple(log_f.shape)} do not match")
    if state is None:
        state = init_state(B, H, Dk, v.shape[-1], q.dtype, q.device)
    return q * scale, state


def _log_weights(log_i: Tensor, log_f: Tensor) -> Tensor:
    """[.., T] -> [.., T, T]: Σ_{s<r≤t} log f_r + ĩ_s for s ≤ t, -inf above the diagonal."""
    return gla.segsum(log_f.unsqueeze(-1)).squeeze(-1) + log_i.unsqueeze(-2)


def _outputs(q, k, v, log_i, log_f, state: State, eps: float) -> Tensor:
    """h̃ for q, k, v [.., T, D] after the carried state (C, n, m) [.., Dk, Dv], [.., Dk], [..]."""
    C0, n0, m0 = state
    D = _log_weights(log_i, log_f)
    past = log_f.cumsum(dim=-1) + m0.unsqueeze(-1)  # log weight of the carried state at t
    m = torch.maximum(D.amax(dim=-1), past)
    scores = (q @ k.transpose(-1, -2)) * (D - m.unsqueeze(-1)).exp()
    w_past = (past - m).exp()
    num = scores @ v + w_past.unsqueeze(-1) * (q @ C0)
    den = scores.sum(dim=-1) + w_past * (q @ n0.unsqueeze(-1)).squeeze(-1)
    return num / (torch.maximum(den.abs(), (-m).exp()) + eps).unsqueeze(-1)


def _end_state(k, v, log_i, log_f, state: State) -> State:
    """(C, n, m) after the tokens k, v [.., T, D], starting from `state`."""
    C0, n0, m0 = state
    F_all = log_f.sum(dim=-1)
    to_end = F_all.unsqueeze(-1) - log_f.cumsum(dim=-1) + log_i  # Σ_{s<r≤T} log f_r + ĩ_s
    past = F_all + m0
    m = torch.maximum(to_end.amax(dim=-1), past)
    weighted = k * (to_end - m.unsqueeze(-1)).exp().unsqueeze(-1)
    w_past = (past - m).exp()
    return (w_past[..., None, None] * C0 + weighted.transpose(-1, -2) @ v,
            w_past.unsqueeze(-1) * n0 + weighted.sum(dim=-2), m)


def parallel(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, state: State | None = None,
             scale: float = 1.0, eps: float = 1e-6) -> tuple[Tensor, State]:
    """Materialised, row-stabilised form: D[t, s] = Σ_{s<r≤t} log f_r + ĩ_s, h̃ = ((q kᵀ) ⊙ e^{D - m}) v / norm."""
    q, state = _prepare(q, k, v, log_i, log_f, state, scale)
    return _outputs(q, k, v, log_i, log_f, state, eps), _end_state(k, v, log_i, log_f, state)


def chunked(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, state: State | None = None,
            scale: float = 1.0, eps: float = 1e-6, chunk_size: int = 64) -> tuple[Tensor, State]:
    """Chunkwise form: chunk-local end states in one batch, (C, n, m) carried over chunks with the running
    max, then every chunk's outputs in one batch from its starting state.

    Any T: the tail is padded with log f = 0 and ĩ = -inf (f = 1, i = 0), which leaves (C, n, m) unchanged.
    """
    q, state = _prepare(q, k, v, log_i, log_f, state, scale)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    L = chunk_size if T >= chunk_size else max(1, T)
    pad = (-T) % L
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_f = F.pad(log_f, (0, pad))
        log_i = F.pad(log_i, (0, pad), value=float("-inf"))
    N = (T + pad) // L
    q, k, v = (x.reshape(B, H, N, L, x.shape[-1]) for x in (q, k, v))
    log_i, log_f = log_i.reshape(B, H, N, L), log_f.reshape(B, H, N, L)
    empty = (q.new_zeros(1), q.new_zeros(1), q.new_full((1,), float("-inf")))  # no past: weight exp(-inf) = 0
    C_loc, n_loc, m_loc = _end_state(k, v, log_i, log_f, empty)  # [B, H, N, ...]
    F_chunk = log_f.sum(dim=-1)  # [B, H, N]
    C, n, m = state
    starts = []
    # per-chunk slices by unbind: its backward is one stack, not a zero-filled full gradient per chunk
    for F_c, C_c, n_c, m_c in zip(*(t.unbind(2) for t in (F_chunk, C_loc, n_loc, m_loc))):
        starts.append((C, n, m))
        m_new = torch.maximum(F_c + m, m_c)
        w_old, w_loc = (F_c + m - m_new).exp(), (m_c - m_new).exp()
        C = w_old[..., None, None] * C + w_loc[..., None, None] * C_c
        n = w_old[..., None] * n + w_loc[..., None] * n_c
        m = m_new
    start = tuple(torch.stack(s, dim=2) for s in zip(*starts))
    out = _outputs(q, k, v, log_i, log_f, start, eps)
    return out.reshape(B, H, N * L, Dv)[:, :, :T], (C, n, m)


def step(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, state: State | None = None,
         scale: float = 1.0, eps: float = 1e-6) -> tuple[Tensor, State]:
    """One token: q, k [B, H, Dk], v [B, H, Dv], log_i, log_f [B, H]. The reference's stabilised step."""
    if state is None:
        state = init_state(*q.shape, v.shape[-1], dtype=q.dtype, device=q.device)
    C, n, m = state
    past = log_f + m
    m_new = torch.maximum(past, log_i)
    f, i = (past - m_new).exp(), (log_i - m_new).exp()
    ik = i.unsqueeze(-1) * k
    C = torch.addcmul(f[..., None, None] * C, ik.unsqueeze(-1), v.unsqueeze(-2))
    n = torch.addcmul(ik, f.unsqueeze(-1), n)
    q = q * scale
    num = (q.unsqueeze(-2) @ C).squeeze(-2)
    den = (q * n).sum(dim=-1)
    return num / (torch.maximum(den.abs(), (-m_new).exp()) + eps).unsqueeze(-1), (C, n, m_new)
