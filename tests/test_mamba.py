"""Mamba's selective scan (S6): parallel = chunked = step = the paper's per-token recurrence; the mamba mixer."""
import math

import pytest
import torch

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.mixers.mamba import Mamba
from seqmix.ops import selective_scan as ss

F64 = torch.float64


def make(Bsz=2, T=37, d=3, N=4, dtype=F64, dt_range=(1e-3, 2.0), A_max=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = map(math.log, dt_range)
    x = torch.randn(Bsz, T, d, generator=g, dtype=dtype)
    dt = torch.exp(torch.rand(Bsz, T, d, generator=g, dtype=dtype) * (hi - lo) + lo)
    A = -torch.rand(d, N, generator=g, dtype=dtype) * A_max - 0.1
    B = torch.randn(Bsz, T, N, generator=g, dtype=dtype)
    C = torch.randn(Bsz, T, N, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    h0 = torch.randn(Bsz, d, N, generator=g, dtype=dtype)
    return x, dt, A, B, C, D, h0


def paper_recurrence(x, dt, A, B, C, D, h):
    """Mamba Algorithm 2, one token at a time, written from the equations (ZOH for A, Euler for B)."""
    ys = []
    for t in range(x.shape[1]):
        dA = torch.exp(dt[:, t, :, None] * A)
        dB = dt[:, t, :, None] * B[:, t, None, :]
        h = dA * h + dB * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("with_state", [False, True])
def test_every_form_equals_the_paper_recurrence(with_state):
    x, dt, A, B, C, D, h_init = make()
    h0 = h_init if with_state else None
    y_ref, h_ref = paper_recurrence(x, dt, A, B, C, D, h_init if with_state else torch.zeros_like(h_init))
    y, h = ss.parallel(x, dt, A, B, C, D, h0)
    assert_close(y, y_ref, what="parallel y"), assert_close(h, h_ref, what="parallel state")
    for chunk in (1, 2, 5, 16, 64):  # 37 tokens: never a multiple, and one chunk longer than the input
        y, h = ss.chunked(x, dt, A, B, C, D, h0, chunk_size=chunk)
        assert_close(y, y_ref, what=f"chunked({chunk}) y"), assert_close(h, h_ref, what=f"chunked({chunk}) state")
    h, ys = h0, []
    for t in range(x.shape[1]):
        y, h = ss.step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, h)
        ys.append(y)
    assert_close(torch.stack(ys, 1), y_ref, what="step y"), assert_close(h, h_ref, what="step state")


def test_state_cut_at_unaligned_positions():
    x, dt, A, B, C, D, h0 = make(T=41)
    y_ref, h_ref = ss.chunked(x, dt, A, B, C, D, h0, chunk_size=8)
    h, ys = h0, []
    for a, b in ((0, 3), (3, 4), (4, 19), (19, 30), (30, 41)):
        y, h = ss.chunked(x[:, a:b], dt[:, a:b], A, B[:, a:b], C[:, a:b], D, h, chunk_size=8)
        ys.append(y)
    assert_close(torch.cat(ys, 1), y_ref, what="pieces"), assert_close(h, h_ref, what="pieces state")


def test_single_token_and_no_skip():
    x, dt, A, B, C, _, h0 = make(T=1)
    y_p, h_p = ss.parallel(x, dt, A, B, C, None, h0)
    y_c, h_c = ss.chunked(x, dt, A, B, C, None, h0)
    y_s, h_s = ss.step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], None, h0)
    assert_close(y_c, y_p), assert_close(y_s, y_p[:, 0]), assert_close(h_c, h_p), assert_close(h_s, h_p)


def test_long_sequence_float32_has_no_overflow_and_matches_float64():
    # Δ up to 20 with A down to −16: per-step log decays down to −320 (exp underflows to 0, must not NaN);
    # Δ down to 1e-4: states that barely decay over 8192 tokens.
    x, dt, A, B, C, D, h0 = make(Bsz=1, T=8192, d=2, N=3, dtype=torch.float32, dt_range=(1e-4, 20.0), A_max=16.0)
    y32, h32 = ss.chunked(x, dt, A, B, C, D, h0)
    y64, h64 = ss.chunked(*(t.double() for t in (x, dt, A, B, C, D, h0)))
    assert torch.isfinite(y32).all() and torch.isfinite(h32).all()
    scale = y64.abs().max()
    assert_close(y32.double(), y64, atol=1e-5 * scale, what="float32 vs float64")
    assert_close(h32.double(), h64, atol=1e-5 * h64.abs().max(), what="float32 state")


def test_chunked_gradcheck_through_outputs_and_states():
    x, dt, A, B, C, D, h0 = make(Bsz=2, T=7, d=2, N=3)
    inputs = tuple(t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0))
    assert torch.autograd.gradcheck(lambda *a: ss.chunked(*a, chunk_size=3), inputs)


@pytest.mark.parametrize("loss_uses_state", [True, False])
def test_chunked_gradient_equals_autograd_of_the_oracle(loss_uses_state):
    x, dt, A, B, C, D, h0 = make(T=23)
    w_y, w_h = torch.randn(2, 23, 3, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    grads = []
    for form in (lambda *a: ss.parallel(*a), lambda *a: ss.chunked(*a, chunk_size=4)):
        inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
        y, h = form(*inputs)
        loss = (y * w_y).sum() + ((h * w_h).sum() if loss_uses_state else 0)
        loss.backward()
        grads.append([t.grad for t in inputs])
    for name, g_c, g_p in zip("x dt A B C D h0".split(), *grads):
        assert_close(g_c, g_p, what=f"grad {name}")


def test_bad_shapes_and_chunk_size_are_refused():
    x, dt, A, B, C, D, h0 = make(T=5)
    with pytest.raises(ValueError, match="do not match"):
        ss.chunked(x, dt, A[:, :2], B, C)
    with pytest.raises(ValueError, match="chunk_size=0"):
        ss.chunked(x, dt, A, B, C, chunk_size=0)


# ---- the mixer ----

def test_mamba_initialisation_follows_the_reference():
    torch.manual_seed(0)
    m = Mamba(64, 1)
    assert m.dt_rank == 4 and m.d_inner == 128 and m.x_proj.out_features == 4 + 2 * 16
    assert_close(torch.exp(m.A_log.detach()), torch.arange(1, 17.0).repeat(128, 1), atol=1e-5)  # S4D-real: A = −(n+1)
    dt0 = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt0.min() >= 1e-3 * (1 - 1e-5) and dt0.max() <= 1e-1 * (1 + 1e-5)
    assert torch.equal(m.D, torch.ones(128))


@pytest.mark.parametrize("options", [dict(chunk_size=4), dict(d_state=3, expand=1, dt_rank=2, d_conv=2),
                                     dict(chunk_size=4, dt_bc_norm="rms", dt_bc_norm_eps=1e-3),
                                     dict(d_state=3, dt_rank=2, dt_bc_norm="rms_weight")])
def test_mamba_any_split(options):
    assert_any_split(ModelConfig(mixer="mamba", d_model=16, n_layers=2, n_heads=2, mixer_options=options))


def test_mamba_mixer_chunked_equals_token_by_token_decoding():
    torch.manual_seed(0)
    m = Mamba(16, 1, chunk_size=8).double()
    x = torch.randn(2, 30, 16, dtype=F64)
    y_ref, _ = m(x)
    state, ys = m.init_state(2), []
    for t in range(30):
        y, state = m(x[:, t:t + 1], state)
        ys.append(y)
    assert_close(torch.cat(ys, 1), y_ref)
    assert state["conv"].shape == (2, 3, 32) and state["ssm"].shape == (2, 32, 16)


@pytest.mark.parametrize("kind", ["rms", "rms_weight"])
def test_mamba_dt_bc_norm_makes_the_mixer_blind_to_the_scale_of_dt_b_and_c(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 11, 16, dtype=F64)
    plain, normed = Mamba(16, 1).double(), Mamba(16, 1, dt_bc_norm=kind, dt_bc_norm_eps=1e-12).double()
    normed.load_state_dict(plain.state_dict(), strict=False)
    if kind == "rms_weight":
        assert [n.weight.shape[0] for n in (normed.dt_norm, normed.B_norm, normed.C_norm)] == [1, 16, 16]
    y_plain, y_normed = plain(x)[0], normed(x)[0]
    with torch.no_grad():
        for m in (plain, normed):
            m.x_proj.weight *= 3.0  # Δ_low, B and C three times larger
    assert (plain(x)[0] - y_plain).abs().max() > 1e-3
    assert_close(normed(x)[0], y_normed)


@pytest.mark.parametrize("options, message", [
    (dict(d_state=0), "d_state=0"), (dict(dt_bc_norm="layernorm"), "dt_bc_norm='layernorm'"), (dict(dt_rank="full"), "dt_rank='full'"),
    (dict(expand=0), "expand=0"), (dict(dt_min=0.2, dt_max=0.1), "dt_min=0.2"),
])
def test_mamba_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        SeqMixLM(ModelConfig(mixer="mamba", d_model=16, n_layers=1, n_heads=2, mixer_options=options))
