"""Form equivalence for the Foundation ops: gated linear attention, linear attention, softmax attention."""
import pytest
import torch

from helpers import assert_close
from seqmix.ops import attention, gated_linear_attention as gla, linear_attention as la

F64 = torch.float64


def _inputs(B=2, H=3, T=37, Dk=8, Dv=5, decay="channel", dtype=F64):
    q, k = torch.randn(2, B, H, T, Dk, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    g = {"none": None, "scalar": -torch.rand(B, H, T, dtype=dtype) * 2,
         "channel": -torch.rand(B, H, T, Dk, dtype=dtype) * 2}[decay]
    return q, k, v, g


def _step_all(step, q, k, v, g, state, **kw):
    outs = []
    for t in range(q.shape[2]):
        o, state = step(q[:, :, t], k[:, :, t], v[:, :, t], None if g is None else g[:, :, t], state, **kw)
        outs.append(o)
    return torch.stack(outs, 2), state


@pytest.mark.parametrize("decay", ["none", "scalar", "channel"])
@pytest.mark.parametrize("T", [1, 15, 16, 37, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_gla_forms_agree(decay, T, chunk_size, head_decay_path):
    q, k, v, g = _inputs(T=T, decay=decay)
    S0 = torch.randn(2, 3, 8, 5, dtype=F64)
    o_par, s_par = gla.parallel(q, k, v, g, S0, scale=0.7)
    o_chk, s_chk = gla.chunked(q, k, v, g, S0, scale=0.7, chunk_size=chunk_size)
    o_stp, s_stp = _step_all(gla.step, q, k, v, g, S0, scale=0.7)
    for o, s, name in [(o_chk, s_chk, "chunked"), (o_stp, s_stp, "step")]:
        assert_close(o, o_par, what=f"{name} output")
        assert_close(s, s_par, what=f"{name} state")


@pytest.mark.parametrize("decay", ["scalar", "channel"])
def test_gla_state_cut_at_unaligned_positions(decay, head_decay_path):
    q, k, v, g = _inputs(T=100, decay=decay)
    full, s_full = gla.chunked(q, k, v, g, chunk_size=32)
    state, outs = None, []
    for a, b in [(0, 7), (7, 40), (40, 41), (41, 100)]:
        o, state = gla.chunked(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], g[:, :, a:b], state, chunk_size=32)
        outs.append(o)
    assert_close(torch.cat(outs, 2), full)
    assert_close(state, s_full)


@pytest.mark.parametrize("decay", ["none", "scalar", "channel"])
def test_gla_chunked_gradcheck(decay):
    q, k, v, g = _inputs(B=1, H=2, T=11, Dk=3, Dv=2, decay=decay)
    S0 = torch.randn(1, 2, 3, 2, dtype=F64)
    args = [t.requires_grad_() for t in (q, k, v, S0)] + ([] if g is None else [g.requires_grad_()])

    def f(q, k, v, S0, *g):
        o, s = gla.chunked(q, k, v, g[0] if g else None, S0, chunk_size=4)
        return o, s

    assert torch.autograd.gradcheck(f, args)


def test_gla_long_sequence_float32_has_no_overflow(head_decay_path):
    # strong decay (g ≈ -20 per step) over 8192 steps: cumulative log decay reaches -1.6e5
    q, k, v, _ = _inputs(B=1, H=1, T=8192, Dk=4, Dv=4, decay="none", dtype=torch.float32)
    for g in (torch.full((1, 1, 8192, 4), -20.0), torch.full((1, 1, 8192), -0.01)):
        o, s = gla.chunked(q, k, v, g, chunk_size=64)
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
        ref, _ = gla.chunked(q.double(), k.double(), v.double(), g.double(), chunk_size=64)
        assert_close(o.double(), ref, atol=1e-4, rtol=1e-4, what="float32 vs float64")


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("T", [1, 37])
def test_linear_attention_forms_agree_and_match_definition(normalize, T):
    q, k, v, _ = _inputs(T=T, decay="none")
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    o_par, s_par = la.parallel(q, k, v, normalize=normalize)
    o_chk, s_chk = la.chunked(q, k, v, normalize=normalize, chunk_size=16)
    outs, state = [], None
    for t in range(T):
        o, state = la.step(q[:, :, t], k[:, :, t], v[:, :, t], state, normalize=normalize)
        outs.append(o)
    assert_close(o_chk, o_par)
    assert_close(torch.stack(outs, 2), o_par)
    assert_close(state, s_par)
    # the definition: Y = (φQφKᵀ ⊙ M) V / (φQφKᵀ ⊙ M) 1
    A = torch.tril(q @ k.transpose(-1, -2))
    expected = A @ v / (A.sum(-1, keepdim=True) + 1e-6) if normalize else A @ v
    assert_close(o_par, expected)


@pytest.mark.parametrize("window", [None, 1, 5])
@pytest.mark.parametrize("T", [1, 23])
def test_attention_forms_agree(window, T):
    q, k, v, _ = _inputs(T=T, Dv=8, decay="none")
    scores = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    t = torch.arange(T)
    allowed = (t[None] <= t[:, None]) & ((t[None] > t[:, None] - window) if window else True)
    expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    o_par, _ = attention.parallel(q, k, v, window=window)
    assert_close(o_par, expected)
    state, outs = None, []
    for a, b in [(0, 3), (3, 4), (4, T)]:
        if a >= T:
            break
        o, state = attention.chunked(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], state, window, chunk_size=4)
        outs.append(o)
    assert_close(torch.cat(outs, 2), expected)
    state, outs = None, []
    for i in range(T):
        o, state = attention.step(q[:, :, i], k[:, :, i], v[:, :, i], state, window)
        outs.append(o)
    assert_close(torch.stack(outs, 2), expected)
    if window:
        assert state[0].shape[2] == min(T, window - 1), "rolling cache keeps window - 1 keys"


def test_attention_bad_window():
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="window"):
        attention.parallel(q, q, q, window=0)
