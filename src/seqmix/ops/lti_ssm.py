r"""Diagonal linear time-invariant SSM (S4D), Gu et al. 2022, "On the Parameterization and Initialization
of Diagonal State Space Models", §2–§3; the long convolution of the Block-State Transformer.

Per channel h, with N complex modes (A diagonal, Re A < 0), discretised by zero-order hold (ZOH):

    Ā = exp(Δ A),   B̄ = (exp(Δ A) − 1) / A · B
    s_t = Ā ⊙ s_{t-1} + B̄ u_t,        y_t = 2 Re(Σ_n C_n s_t[n])

(the factor 2 Re keeps the output real: each complex mode stands for a conjugate pair, so N complex
modes are a real state of size 2N). Unrolled, this is a causal convolution with the kernel

    K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l),   y_t = Σ_{s≤t} K_{t−s} u_s + 2 Re(Σ_n C_n Ā_n^{t+1} s_{-1}[n])

where the last term is the closed-form contribution of an initial state. Three ways to compute it:

* ``step``      — the recurrence, one token (decoding);
* ``parallel``  — the explicit T×T Toeplitz matrix of K (the oracle, O(T²));
* ``chunked``   — FFT convolution, O(T log T): with ``chunk_size=None`` one FFT over the whole sequence,
  otherwise chunk by chunk with the state carried in closed form between chunks.
  ``fft_conv(u, K)`` is the bare causal FFT convolution with any kernel (the BST's context states).

Shapes: u ``[B, H, T]`` real; dtA = ΔA, dB = B̄, C ``[H, N]`` complex (see `discretize`); state ``[B, H, N]``
complex. Powers Ā^l are computed as exp(l·ΔA) — the exp of a number with non-positive real part — so
nothing overflows at any length. The Vandermonde matrix exp(l·ΔA) costs O(H·N·T) memory (O(H·N·chunk)
when chunked).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def discretize(dt: Tensor, A: Tensor, B: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Zero-order hold. dt [H] (positive), A [H, N] complex, B [H, N] complex (None = ones, as in S4D).

    Returns (dtA = ΔA, dB = B̄ = (exp(ΔA) − 1)/A · B), both [H, N] complex.
    """
    dtA = dt[:, None] * A
    dB = torch.expm1(dtA) / A
    return dtA, (dB if B is None else dB * B)


def _powers(dtA: Tensor, stop: int) -> Tensor:
    """Ā^l = exp(l·ΔA) for l in [0, stop): [H, N, stop] (the Vandermonde matrix)."""
    ls = torch.arange(stop, device=dtA.device, dtype=dtA.real.dtype)
    return torch.exp(dtA[..., None] * ls)


def kernel(dtA: Tensor, dB: Tensor, C: Tensor, length: int) -> Tensor:
    """K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l) for l < length: [H, length] real."""
    return _kernel(_powers(dtA, length), dB, C)


def _kernel(P: Tensor, dB: Tensor, C: Tensor) -> Tensor:
    return 2 * torch.einsum("hn,hnl->hl", C * dB, P).real


def fft_conv(u: Tensor, K: Tensor) -> Tensor:
    """Causal convolution y_t = Σ_{s≤t} K_{t−s} u_s along the last axis by FFT, O(T log T).

    u [..., H, T] real, K [H, L] with L ≥ T (only K[:, :T] is used) -> y [..., H, T].
    """
    T = u.shape[-1]
    n = 2 * T  # zero padding to 2T turns the FFT's circular convolution into a linear one
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K[..., :T], n=n), n=n)
    return y[..., :T]


def _state_terms(u: Tensor, P: Tensor, dB: Tensor, C: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """Closed forms over one block of T tokens, given the powers P = Ā^0 .. Ā^{≥T}: the output added by the
    initial state, 2 Re(Σ_n C_n Ā_n^{t+1} s0[n]), and the state after the block, Ā^T s0 + Σ_s Ā^{T−1−s} B̄ u_s."""
    T = u.shape[-1]
    final = dB * torch.einsum("bhs,hns->bhn", u.to(P.dtype), P[..., :T].flip(-1))
    if state is None:
        return u.new_zeros(()), final
    y0 = 2 * torch.einsum("hn,hnt,bhn->bht", C, P[..., 1:T + 1], state).real
    return y0, final + P[..., T] * state


def _check(u: Tensor, dtA: Tensor, dB: Tensor, C: Tensor) -> None:
    if not (dtA.shape == dB.shape == C.shape) or dtA.dim() != 2 or u.shape[1] != dtA.shape[0]:
        raise ValueError(f"lti_ssm: u {tuple(u.shape)}, dtA {tuple(dtA.shape)}, dB {tuple(dB.shape)}, "
                         f"C {tuple(C.shape)} do not match (expected u [B,H,T] and dtA, dB, C [H,N])")


def parallel(u: Tensor, dtA: Tensor, dB: Tensor, C: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Explicit convolution: y = Toeplitz(K) u (the T×T matrix materialised) + the initial-state term."""
    _check(u, dtA, dB, C)
    T = u.shape[-1]
    P = _powers(dtA, T + 1)
    K = _kernel(P[..., :T], dB, C)
    lag = torch.arange(T, device=u.device)[:, None] - torch.arange(T, device=u.device)  # t − s
    M = torch.where(lag >= 0, K[:, lag.clamp(min=0)], K.new_zeros(()))  # [H, T, T]
    y0, final = _state_terms(u, P, dB, C, state)
    return torch.einsum("hts,bhs->bht", M, u) + y0, final


def chunked(u: Tensor, dtA: Tensor, dB: Tensor, C: Tensor, state: Tensor | None = None,
            chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """FFT convolution, over the whole sequence (chunk_size=None) or chunk by chunk with the state carried."""
    _check(u, dtA, dB, C)
    T = u.shape[-1]
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"lti_ssm: chunk_size={chunk_size} must be a positive integer or None")
    Q = T if chunk_size is None else min(chunk_size, T)
    P = _powers(dtA, Q + 1)
    K = _kernel(P[..., :Q], dB, C)
    ys = []
    for c0 in range(0, T, Q):
        uc = u[..., c0:c0 + Q]
        y0, state = _state_terms(uc, P, dB, C, state)
        ys.append(fft_conv(uc, K) + y0)
    return torch.cat(ys, dim=-1), state


def step(u: Tensor, dtA: Tensor, dB: Tensor, C: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token: u [B, H] real, state [B, H, N] complex."""
    if state is None:
        state = torch.zeros(*u.shape, dtA.shape[-1], dtype=dtA.dtype, device=u.device)
    state = torch.exp(dtA) * state + dB * u[..., None]
    return 2 * torch.einsum("hn,bhn->bh", C, state).real, state
