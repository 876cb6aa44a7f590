"""mLSTM: stabilised parallel, chunked and step forms agree; the stabiliser cancels; exp gates never overflow."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.ops import mlstm

from test_rwkv import assert_any_split_perturbed

F64 = torch.float64


def _inputs(B=2, H=3, T=37, Dk=8, Dv=5, forget="sigmoid", dtype=F64, gate_scale=3.0):
    q, k = torch.randn(2, B, H, T, Dk, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    log_i = torch.randn(B, H, T, dtype=dtype) * gate_scale
    f_pre = torch.randn(B, H, T, dtype=dtype) * gate_scale
    log_f = F.logsigmoid(f_pre) if forget == "sigmoid" else f_pre / gate_scale
    return q, k, v, log_i, log_f


def _state(B=2, H=3, Dk=8, Dv=5):
    return torch.randn(B, H, Dk, Dv, dtype=F64), torch.randn(B, H, Dk, dtype=F64), torch.randn(B, H, dtype=F64)


def _steps(q, k, v, log_i, log_f, state, **kw):
    outs = []
    for t in range(q.shape[2]):
        o, state = mlstm.step(q[:, :, t], k[:, :, t], v[:, :, t], log_i[:, :, t], log_f[:, :, t], state, **kw)
        outs.append(o)
    return torch.stack(outs, 2), state


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
@pytest.mark.parametrize("T", [1, 15, 37, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_forms_agree(forget, T, chunk_size):
    q, k, v, log_i, log_f = _inputs(T=T, forget=forget)
    state = _state()
    expected, s_end = _steps(q, k, v, log_i, log_f, state, scale=0.5)
    for name, (o, s) in {"parallel": mlstm.parallel(q, k, v, log_i, log_f, state, scale=0.5),
                         "chunked": mlstm.chunked(q, k, v, log_i, log_f, state, scale=0.5, chunk_size=chunk_size)
                         }.items():
        assert_close(o, expected, what=f"{name} output")
        for x, y, part in zip(s, s_end, "Cnm"):
            assert_close(x, y, what=f"{name} state {part}")


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_stabiliser_cancels_against_the_unstabilised_definition(forget):
    """C̄_t = f C̄ + i k vᵀ, n̄_t = f n̄ + i k, h = C̄ᵀq / max(|n̄ᵀq|, 1): equal to every form with eps = 0."""
    q, k, v, log_i, log_f = _inputs(T=37, forget=forget, gate_scale=1.0)
    C, n, m = _state()
    Cb, nb = C * m.exp()[..., None, None], n * m.exp()[..., None]
    outs = []
    for t in range(37):
        f, i = log_f[:, :, t].exp(), log_i[:, :, t].exp()
        Cb = f[..., None, None] * Cb + i[..., None, None] * k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        nb = f[..., None] * nb + i[..., None] * k[:, :, t]
        den = (q[:, :, t] * nb).sum(-1).abs().clamp(min=1.0)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], Cb) / den.unsqueeze(-1))
    expected = torch.stack(outs, 2)
    o_par, (C_end, n_end, m_end) = mlstm.parallel(q, k, v, log_i, log_f, (C, n, m), eps=0.0)
    assert_close(o_par, expected, what="parallel")
    assert_close(mlstm.chunked(q, k, v, log_i, log_f, (C, n, m), eps=0.0, chunk_size=8)[0], expected, what="chunked")
    assert_close(_steps(q, k, v, log_i, log_f, (C, n, m), eps=0.0)[0], expected, what="step")
    assert_close(C_end * m_end.exp()[..., None, None], Cb, what="C̄ = C e^m")
    assert_close(n_end * m_end.exp()[..., None], nb, what="n̄ = n e^m")


def test_state_cut_at_unaligned_positions():
    q, k, v, log_i, log_f = _inputs(T=100, forget="exp")
    full, s_full = mlstm.chunked(q, k, v, log_i, log_f, chunk_size=32)
    state, outs = None, []
    for a, b in [(0, 7), (7, 40), (40, 41), (41, 100)]:
        o, state = mlstm.chunked(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], log_i[:, :, a:b], log_f[:, :, a:b],
                                 state, chunk_size=32)
        outs.append(o)
    assert_close(torch.cat(outs, 2), full)
    for x, y in zip(state, s_full):
        assert_close(x, y)


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_chunked_gradcheck(forget):
    q, k, v, log_i, log_f = _inputs(B=1, H=1, T=9, Dk=3, Dv=2, forget=forget)  # chunks of 4, 4 and 1 (padded)
    C, n, m = _state(B=1, H=1, Dk=3, Dv=2)
    args = [t.requires_grad_() for t in (q, k, v, log_i, log_f, C, n, m)]

    def f(q, k, v, log_i, log_f, C, n, m):
        o, state = mlstm.chunked(q, k, v, log_i, log_f, (C, n, m), scale=0.6, chunk_size=4)
        return (o, *state)

    assert torch.autograd.gradcheck(f, args)


def test_float32_long_sequence_with_exponential_gates():
    T = 8192
    q, k, v, log_i, log_f = _inputs(B=1, H=2, T=T, Dk=4, Dv=4, forget="exp", dtype=torch.float32)
    log_i = 60 + 20 * log_i / 3  # e^ĩ overflows float32 for ĩ > 88.7
    log_f = 0.5 * log_f  # exponential forget gates above and below 1
    # positive q, k keep n_tᵀq_t away from zero: h̃ is then a convex mix of values, well conditioned, so
    # float32 can be held to float64 tightly (with mixed signs |n_tᵀq_t| can come arbitrarily close to 0)
    q, k = q.abs(), k.abs()
    assert torch.isinf(log_i.exp()).any() and log_f.max() > 0
    ref, s_ref = mlstm.chunked(q.double(), k.double(), v.double(), log_i.double(), log_f.double(), chunk_size=64)
    o, s = mlstm.chunked(q, k, v, log_i, log_f, chunk_size=64)
    assert_close(o.double(), ref, atol=1e-4, rtol=1e-4, what="chunked float32 vs float64")
    o_stp, s_stp = _steps(q, k, v, log_i, log_f, None)
    assert_close(o_stp.double(), ref, atol=1e-4, rtol=1e-4, what="step float32 vs float64")
    for x, y, part in zip(s_stp, s_ref, "Cnm"):
        assert_close(x.double(), y, atol=1e-3, rtol=1e-4, what=f"step state {part}")


@pytest.mark.parametrize("options", [{}, {"forget_gate": "exp", "chunk_size": 5}, {"proj_factor": 1.0}])
def test_mixer_any_split(options):
    assert_any_split_perturbed(ModelConfig(mixer="mlstm", d_model=32, n_layers=2, n_heads=2, mixer_options=options),
                               noise=0.1)


def test_mixer_state_shapes_and_options():
    model = SeqMixLM(ModelConfig(mixer="mlstm", d_model=32, n_layers=1, n_heads=4))
    s = model.init_state(3)[0]["mixer"]
    assert s["C"].shape == (3, 4, 16, 16) and s["n"].shape == (3, 4, 16) and s["m"].shape == (3, 4)
    assert s["conv"].shape == (3, 3, 64)
    with pytest.raises(ValueError, match="forget_gate='tanh'"):
        SeqMixLM(ModelConfig(mixer="mlstm", d_model=32, n_heads=2, mixer_options={"forget_gate": "tanh"}))
    for options, message in (({"qkv_blocksize": 5}, "qkv_blocksize=5"), ({"qkv_blocksize": 0}, "qkv_blocksize=0"),
                             ({"conv_size": 0}, "conv_size=0"), ({"chunk_size": 0}, "chunk_size=0")):
        with pytest.raises(ValueError, match=message):
            SeqMixLM(ModelConfig(mixer="mlstm", d_model=32, n_heads=2, mixer_options=options))
