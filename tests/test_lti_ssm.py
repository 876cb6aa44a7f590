"""Diagonal LTI SSM (S4D): recurrence = explicit causal convolution = FFT convolution; the s4d mixer."""
import math

import pytest
import torch

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.mixers.s4d import S4D
from seqmix.ops import lti_ssm

F64, C128 = torch.float64, torch.complex128


def make(Bsz=2, H=3, T=37, N=4, dtype=F64, dt_range=(1e-3, 1.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = map(math.log, dt_range)
    cdtype = torch.complex64 if dtype == torch.float32 else C128
    dt = torch.exp(torch.rand(H, generator=g, dtype=dtype) * (hi - lo) + lo)
    A = torch.complex(-torch.rand(H, N, generator=g, dtype=dtype) - 0.1, math.pi * torch.arange(N, dtype=dtype).repeat(H, 1))
    B = torch.randn(H, N, generator=g, dtype=cdtype)
    C = torch.randn(H, N, generator=g, dtype=cdtype)
    u = torch.randn(Bsz, H, T, generator=g, dtype=dtype)
    s0 = torch.randn(Bsz, H, N, generator=g, dtype=cdtype)
    dtA, dB = lti_ssm.discretize(dt, A, B)
    return u, dtA, dB, C, s0, (dt, A, B)


def test_zero_order_hold_matches_the_matrix_exponential():
    # ZOH: exp([[A, B], [0, 0]]·Δ) = [[Ā, B̄], [0, 1]] for each scalar mode
    _, dtA, dB, _, _, (dt, A, B) = make()
    for h in range(A.shape[0]):
        for n in range(A.shape[1]):
            M = torch.zeros(2, 2, dtype=C128)
            M[0, 0], M[0, 1] = A[h, n] * dt[h], B[h, n] * dt[h]
            E = torch.linalg.matrix_exp(M)
            assert abs(E[0, 0] - torch.exp(dtA[h, n])) < 1e-12 and abs(E[0, 1] - dB[h, n]) < 1e-12


def test_kernel_and_fft_conv_against_direct_sums():
    u, dtA, dB, C, _, _ = make(T=19)
    K = lti_ssm.kernel(dtA, dB, C, 19)
    Abar, power, K_ref = torch.exp(dtA), torch.ones_like(dtA), []
    for _ in range(19):  # Ā^l by repeated multiplication
        K_ref.append(2 * (C * dB * power).sum(-1).real)
        power = power * Abar
    assert_close(K, torch.stack(K_ref, -1))
    y_ref = torch.stack([(K[:, :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(19)], -1)
    assert_close(lti_ssm.fft_conv(u, K), y_ref)


@pytest.mark.parametrize("with_state", [False, True])
def test_recurrence_convolution_and_fft_agree(with_state):
    u, dtA, dB, C, s_init, _ = make()
    s0 = s_init if with_state else None
    s, ys = s0, []
    for t in range(u.shape[-1]):
        y, s = lti_ssm.step(u[..., t], dtA, dB, C, s)
        ys.append(y)
    y_ref, s_ref = torch.stack(ys, -1), s
    y, s = lti_ssm.parallel(u, dtA, dB, C, s0)
    assert_close(y, y_ref, what="explicit conv"), assert_close(torch.view_as_real(s), torch.view_as_real(s_ref))
    for chunk in (None, 1, 5, 16, 64):
        y, s = lti_ssm.chunked(u, dtA, dB, C, s0, chunk_size=chunk)
        assert_close(y, y_ref, what=f"fft chunk={chunk}")
        assert_close(torch.view_as_real(s), torch.view_as_real(s_ref), what=f"fft chunk={chunk} state")


def test_state_cut_at_unaligned_positions_and_single_token():
    u, dtA, dB, C, s0, _ = make(T=40)
    y_ref, s_ref = lti_ssm.chunked(u, dtA, dB, C, s0)
    s, ys = s0, []
    for a, b in ((0, 1), (1, 12), (12, 13), (13, 40)):
        y, s = lti_ssm.chunked(u[..., a:b], dtA, dB, C, s, chunk_size=8)
        ys.append(y)
    assert_close(torch.cat(ys, -1), y_ref), assert_close(torch.view_as_real(s), torch.view_as_real(s_ref))


def test_long_sequence_float32():
    # Δ·Re A down to −4 per step: Ā^l underflows to 0 long before l = 8192, and must not turn into NaN
    u, dtA, dB, C, s0, _ = make(Bsz=1, H=3, T=8192, N=4, dtype=torch.float32, dt_range=(1e-4, 4.0))
    y64, s64 = lti_ssm.chunked(u.double(), dtA.to(C128), dB.to(C128), C.to(C128), s0.to(C128))
    for chunk in (None, 1000):
        y32, s32 = lti_ssm.chunked(u, dtA, dB, C, s0, chunk_size=chunk)
        assert torch.isfinite(y32).all() and torch.isfinite(torch.view_as_real(s32)).all()
        assert_close(y32.double(), y64, atol=1e-5 * y64.abs().max(), what=f"float32 chunk={chunk}")


def test_chunked_gradcheck():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 2, 7, dtype=F64, generator=g)
    log_dt = torch.randn(2, dtype=F64, generator=g) - 2
    A_re, A_im = -torch.rand(2, 3, dtype=F64, generator=g) - 0.1, torch.randn(2, 3, dtype=F64, generator=g)
    C_ri = torch.randn(2, 3, 2, dtype=F64, generator=g)
    s0 = torch.randn(2, 2, 3, 2, dtype=F64, generator=g)

    def f(u, log_dt, A_re, A_im, C_ri, s0):
        dtA, dB = lti_ssm.discretize(log_dt.exp(), torch.complex(A_re, A_im))
        y, s = lti_ssm.chunked(u, dtA, dB, torch.view_as_complex(C_ri), torch.view_as_complex(s0), chunk_size=3)
        return y, torch.view_as_real(s)

    inputs = tuple(t.requires_grad_() for t in (u, log_dt, A_re, A_im, C_ri, s0))
    assert torch.autograd.gradcheck(f, inputs)


# ---- the mixer ----

@pytest.mark.parametrize("options", [dict(chunk_size=5, d_state=6), dict(d_state=2)])
def test_s4d_any_split(options):
    assert_any_split(ModelConfig(mixer="s4d", d_model=16, n_layers=2, n_heads=2, mixer_options=options))


def test_s4d_lin_initialisation():
    m = S4D(8, 1, d_state=6)
    assert torch.equal(m.A_imag[0], math.pi * torch.arange(3.0)) and torch.allclose(m.log_A_real.exp(), torch.tensor(0.5))
    assert m.init_state(2)["ssm"].shape == (2, 8, 3, 2)


@pytest.mark.parametrize("options, message", [
    (dict(d_state=5), "d_state=5"), (dict(chunk_size=0), "chunk_size=0"), (dict(dt_min=1.0, dt_max=0.1), "dt_min=1.0"),
])
def test_s4d_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        SeqMixLM(ModelConfig(mixer="s4d", d_model=16, n_layers=1, n_heads=2, mixer_options=options))
