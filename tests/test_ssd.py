"""Mamba-2's SSD: quadratic form = chunked SSD (on the GLA core) = step = the per-token recurrence; mamba2 mixer."""
import math

import pytest
import torch

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.mixers.mamba2 import Mamba2
from seqmix.ops import ssd

F64 = torch.float64


def make(Bsz=2, H=4, G=2, T=37, P=3, N=5, dtype=F64, dt_range=(1e-3, 2.0), A_max=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = map(math.log, dt_range)
    x = torch.randn(Bsz, H, T, P, generator=g, dtype=dtype)
    dt = torch.exp(torch.rand(Bsz, H, T, generator=g, dtype=dtype) * (hi - lo) + lo)
    A = -torch.rand(H, generator=g, dtype=dtype) * A_max - 0.1
    B = torch.randn(Bsz, G, T, N, generator=g, dtype=dtype)
    C = torch.randn(Bsz, G, T, N, generator=g, dtype=dtype)
    D = torch.randn(H, generator=g, dtype=dtype)
    S0 = torch.randn(Bsz, H, N, P, generator=g, dtype=dtype)
    return x, dt, A, B, C, D, S0


def paper_recurrence(x, dt, A, B, C, D, S):
    """H_t = exp(Δ_t A) H_{t-1} + B_t (Δ_t x_t)ᵀ, y_t = H_tᵀ C_t + D x_t per head; head h uses group h // (H/G)."""
    H, G = x.shape[1], B.shape[1]
    group = torch.arange(H) // (H // G)
    ys = []
    for t in range(x.shape[2]):
        Bt, Ct = B[:, group, t], C[:, group, t]  # [B, H, N]
        S = torch.exp(dt[:, :, t] * A)[..., None, None] * S + Bt[..., :, None] * (dt[:, :, t, None] * x[:, :, t])[..., None, :]
        ys.append(torch.einsum("bhnp,bhn->bhp", S, Ct) + D[:, None] * x[:, :, t])
    return torch.stack(ys, 2), S


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("with_state", [False, True])
def test_every_form_equals_the_paper_recurrence(G, with_state):
    x, dt, A, B, C, D, S_init = make(G=G)
    S0 = S_init if with_state else None
    y_ref, S_ref = paper_recurrence(x, dt, A, B, C, D, S_init if with_state else torch.zeros_like(S_init))
    y, S = ssd.parallel(x, dt, A, B, C, D, S0)
    assert_close(y, y_ref, what="parallel y"), assert_close(S, S_ref, what="parallel state")
    for chunk in (1, 4, 16, 64):
        y, S = ssd.chunked(x, dt, A, B, C, D, S0, chunk_size=chunk)
        assert_close(y, y_ref, what=f"chunked({chunk}) y"), assert_close(S, S_ref, what=f"chunked({chunk}) state")
    S, ys = S0, []
    for t in range(x.shape[2]):
        y, S = ssd.step(x[:, :, t], dt[:, :, t], A, B[:, :, t], C[:, :, t], D, S)
        ys.append(y)
    assert_close(torch.stack(ys, 2), y_ref, what="step y"), assert_close(S, S_ref, what="step state")


def test_state_cut_at_unaligned_positions():
    x, dt, A, B, C, D, S0 = make(T=45)
    y_ref, S_ref = ssd.chunked(x, dt, A, B, C, D, S0, chunk_size=16)
    S, ys = S0, []
    for a, b in ((0, 1), (1, 17), (17, 18), (18, 33), (33, 45)):
        y, S = ssd.chunked(x[:, :, a:b], dt[:, :, a:b], A, B[:, :, a:b], C[:, :, a:b], D, S, chunk_size=16)
        ys.append(y)
    assert_close(torch.cat(ys, 2), y_ref), assert_close(S, S_ref)


def test_single_token():
    x, dt, A, B, C, D, S0 = make(T=1)
    y_p, S_p = ssd.parallel(x, dt, A, B, C, D, S0)
    y_c, S_c = ssd.chunked(x, dt, A, B, C, D, S0)
    assert_close(y_c, y_p), assert_close(S_c, S_p)


def _long_float32():
    # the cumulative log decay reaches −4·10³ and −3.5·10⁴ over 8192 tokens (two heads): any exp of a positive
    # segment sum would overflow; Δ down to 1e-4 keeps some states barely decaying
    f32 = make(Bsz=1, H=2, G=1, T=8192, P=2, N=2, dtype=torch.float32, dt_range=(1e-4, 20.0), A_max=4.0)
    y64, S64 = ssd.chunked(*(t.double() for t in f32))
    return f32, y64, S64


def test_long_sequence_float32_segsum_does_not_overflow():
    (x, dt, A, B, C, D, S0), y64, _ = _long_float32()
    y32, S32 = ssd.chunked(x, dt, A, B, C, D, S0)
    assert torch.isfinite(y32).all() and torch.isfinite(S32).all()
    n = 1024  # the quadratic form's segment sum, on a shorter float32 input with the same extreme decays
    y_p, _ = ssd.parallel(x[:, :, :n], dt[:, :, :n], A, B[:, :, :n], C[:, :, :n], D, S0)
    assert_close(y_p.double(), y64[:, :, :n], atol=1e-5 * y64.abs().max(), what="parallel float32")


def test_long_sequence_float32_chunked_precision():
    (x, dt, A, B, C, D, S0), y64, S64 = _long_float32()
    y32, S32 = ssd.chunked(x, dt, A, B, C, D, S0)
    assert_close(y32.double(), y64, atol=1e-5 * y64.abs().max(), what="float32 vs float64")
    assert_close(S32.double(), S64, atol=1e-5 * S64.abs().max(), what="float32 state")


def test_chunked_gradcheck():
    x, dt, A, B, C, D, S0 = make(Bsz=1, H=2, G=1, T=7, P=2, N=2)
    inputs = tuple(t.clone().requires_grad_() for t in (x, dt, A, B, C, D, S0))
    assert torch.autograd.gradcheck(lambda *a: ssd.chunked(*a, chunk_size=3), inputs)


def test_groups_must_divide_heads():
    x, dt, A, B, C, D, S0 = make(H=4, G=3)
    with pytest.raises(ValueError, match="ngroups=3"):
        ssd.chunked(x, dt, A, B, C)


# ---- the mixer ----

@pytest.mark.parametrize("options", [
    dict(d_state=8, chunk_size=5),                           # heads from n_heads (2 heads of 16)
    dict(d_state=4, headdim=4, ngroups=2, chunk_size=8),     # 8 heads in 2 groups
    dict(d_state=4, d_inner=21, headdim=7, chunk_size=4),   # a width that is no multiple of d_model: 3 heads
    dict(d_state=4, headdim=8, ngroups=2, gate_norm="norm_then_gate"),
    dict(d_state=4, headdim=8, gate_norm="gate_only", chunk_size=4),
])
def test_mamba2_any_split(options):
    assert_any_split(ModelConfig(mixer="mamba2", d_model=16, n_layers=2, n_heads=2, mixer_options=options))


def test_mamba2_structure_and_state():
    torch.manual_seed(0)
    m = Mamba2(32, 2, d_state=8, headdim=16, ngroups=2)
    assert m.heads == 4 and m.in_proj.out_features == 64 + (64 + 2 * 2 * 8) + 4  # [z, x, B, C, dt]
    assert m.conv.conv.in_channels == 64 + 2 * 2 * 8  # the conv runs over x‖B‖C
    assert ((-torch.exp(m.A_log) <= -1) & (-torch.exp(m.A_log) >= -16)).all()
    state = m.init_state(3)
    assert state["conv"].shape == (3, 3, 96) and state["ssm"].shape == (3, 4, 8, 16)
    y, new = m(torch.randn(3, 1, 32), state)
    assert y.shape == (3, 1, 32) and new["ssm"].shape == (3, 4, 8, 16)
    explicit = Mamba2(32, 2, d_state=8, headdim=10, d_inner=50, expand=7)  # d_inner wins over expand
    assert explicit.d_inner == 50 and explicit.heads == 5 and explicit.out_proj.in_features == 50


def test_mamba2_gate_and_norm_of_the_output():
    """What reaches out_proj: u = y · SiLU(z) without a norm; RMSNorm(u) (Mamba-2's); RMSNorm(y) · SiLU(z)."""
    torch.manual_seed(0)
    kinds = ("gate_only", "gate_then_norm", "norm_then_gate")
    mixers = {k: Mamba2(16, 2, d_state=4, headdim=8, ngroups=2, gate_norm=k).double() for k in kinds}
    for k in kinds[1:]:
        mixers[k].load_state_dict(mixers["gate_only"].state_dict(), strict=False)
        torch.nn.init.normal_(mixers[k].norm.weight)
    assert not hasattr(mixers["gate_only"], "norm")
    x = torch.randn(2, 5, 16, dtype=F64)
    inputs = {}
    for k, m in mixers.items():
        m.out_proj.register_forward_pre_hook(lambda mod, args, k=k: inputs.update({k: args[0]}))
        m(x)
    gate = torch.nn.functional.silu(mixers["gate_only"].in_proj(x)[..., :32])

    def rms(t, weight):  # RMSNorm over each group of 16 channels
        g = t.reshape(2, 5, 2, 16)
        return (g / g.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()).reshape(2, 5, 32) * weight

    u = inputs["gate_only"]
    assert_close(inputs["gate_then_norm"], rms(u, mixers["gate_then_norm"].norm.weight))
    assert_close(inputs["norm_then_gate"], rms(u / gate, mixers["norm_then_gate"].norm.weight) * gate)


@pytest.mark.parametrize("options, message", [
    (dict(headdim=5), "headdim=5"), (dict(ngroups=3), "ngroups=3"), (dict(d_state=0), "d_state=0"),
    (dict(chunk_size=-1), "chunk_size=-1"), (dict(d_inner=0), "d_inner=0"), (dict(d_inner=20, headdim=8), "headdim=8"),
    (dict(gate_norm="norm"), "gate_norm='norm'"), (dict(dt_limit=(-0.1, 1.0)), r"dt_limit=\(-0.1, 1.0\)"),
])
def test_mamba2_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        SeqMixLM(ModelConfig(mixer="mamba2", d_model=16, n_layers=1, n_heads=2, mixer_options=options))
