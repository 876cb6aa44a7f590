import pytest
import torch
import torch.nn.functional as F

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.mixers.base import MIXERS
from seqmix.ops import rglru as op


def inputs(B, T, D, dtype=torch.float64, strength=1.0):
    x = torch.randn(B, T, D, dtype=dtype)
    log_a = -strength * torch.rand(B, T, D, dtype=dtype) - 1e-3
    return x, log_a


def per_token_oracle(x, log_a, h0=None):
    """The paper's equation, one token at a time."""
    h = torch.zeros_like(x[:, 0]) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        a = log_a[:, t].exp()
        h = a * h + (1 - a ** 2).sqrt() * x[:, t]
        out.append(h)
    return torch.stack(out, dim=1), h


@pytest.mark.parametrize("T, chunk", [(1, 4), (7, 4), (16, 4), (37, 8), (64, 64), (50, 64)])
def test_forms_agree_with_the_per_token_oracle(T, chunk):
    x, log_a = inputs(3, T, 5)
    h0 = torch.randn(3, 5, dtype=torch.float64)
    want, want_last = per_token_oracle(x, log_a, h0)
    for out, last in (op.parallel(x, log_a, h0), op.chunked(x, log_a, h0, chunk_size=chunk)):
        assert_close(out, want)
        assert_close(last, want_last)
    h = h0
    for t in range(T):
        o, h = op.step(x[:, t], log_a[:, t], h)
        assert_close(o, want[:, t])
    assert_close(op.chunked(x, log_a, None, chunk)[0], per_token_oracle(x, log_a)[0])


def test_state_cut_at_unaligned_positions():
    x, log_a = inputs(2, 45, 4)
    want, want_last = op.parallel(x, log_a)
    outs, h = [], None
    for a, b in [(0, 3), (3, 4), (4, 21), (21, 45)]:
        o, h = op.chunked(x[:, a:b], log_a[:, a:b], h, chunk_size=8)
        outs.append(o)
    assert_close(torch.cat(outs, dim=1), want)
    assert_close(h, want_last)


def test_long_sequence_float32_is_finite_and_matches_float64():
    x, log_a = inputs(1, 4096, 3, dtype=torch.float32, strength=8.0)  # strong and weak decays
    log_a[:, :, 0] = -1e-4  # nearly no decay: the state accumulates over the whole sequence
    out, last = op.chunked(x, log_a, chunk_size=64)
    ref, _ = op.chunked(x.double(), log_a.double(), chunk_size=64)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_chunked_gradcheck():
    x, log_a = inputs(2, 11, 3)
    h0 = torch.randn(2, 3, dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (x, log_a, h0))
    assert torch.autograd.gradcheck(lambda x, g, h: op.chunked(x, g, h, chunk_size=4), args)


def test_mixer_forms_agree_and_gradcheck():
    torch.manual_seed(0)
    mixer = MIXERS.build("rglru", 8, 2, options={"chunk_size": 4}, layer_idx=0, n_layers=1).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    y, none = mixer(x)
    assert none is None and y.shape == x.shape
    state, steps = mixer.init_state(2), []
    for t in range(13):
        o, state = mixer(x[:, t:t + 1], state)
        steps.append(o)
    assert_close(torch.cat(steps, dim=1), y)
    assert set(state) == {"conv", "h"} and state["h"].shape == (2, 8) and state["conv"].shape == (2, 3, 8)
    small = x[:1, :5].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: mixer(v)[0], (small,))


def test_decay_initialisation_and_range():
    mixer = MIXERS.build("rglru", 32, 4, layer_idx=0, n_layers=1)
    rho = torch.exp(-F.softplus(mixer.log_lambda))
    assert rho.min() >= 0.9 - 1e-6 and rho.max() <= 0.999 + 1e-6


def _recurrent_block_written_out(m, x):
    """RecurrentGemma's recurrent block, token by token: g = gelu_tanh(W_g x + b_g), u = conv(W_u x + b_u),
    r, i = σ(blockdiag(u)), log a = −c r softplus(Λ), h_t = a_t h_{t−1} + √(1 − a_t²) i_t u_t but h_0 = i_0 u_0,
    y = W_o (h ⊙ g) + b_o."""
    g, u = (x @ m.in_proj.weight.t() + m.in_proj.bias).chunk(2, -1)
    K, w = m.conv.kernel_size, m.conv.conv.weight[:, 0]
    padded = F.pad(u, (0, 0, K - 1, 0))
    u = torch.stack([(padded[:, t:t + K] * w.t()).sum(1) for t in range(x.shape[1])], 1) + m.conv.conv.bias

    def blockdiag(layer, v):
        return torch.einsum("bthi,hij->bthj", v.unflatten(-1, (m.n_heads, -1)), layer.weight).flatten(-2) + \
            layer.bias.flatten()
    r, i = torch.sigmoid(blockdiag(m.gate_a, u)), torch.sigmoid(blockdiag(m.gate_x, u))
    a = torch.exp(-m.c * r * F.softplus(m.log_lambda))
    h, outs = torch.zeros_like(u[:, 0]), []
    for t in range(x.shape[1]):
        h = i[:, t] * u[:, t] if t == 0 else a[:, t] * h + (1 - a[:, t] ** 2).sqrt() * i[:, t] * u[:, t]
        outs.append(h)
    return (torch.stack(outs, 1) * F.gelu(g, approximate="tanh")) @ m.out.weight.t() + m.out.bias


def test_recurrent_gemma_settings_bias_and_reset_at_the_first_token():
    torch.manual_seed(0)
    m = MIXERS.build("rglru", 8, 2, options={"bias": True, "reset_first": True, "chunk_size": 4}).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    expected = _recurrent_block_written_out(m, x)
    assert_close(m(x)[0], expected, what="one shot")
    state, pieces = m.init_state(2), []
    for lo, hi in ((0, 1), (1, 2), (2, 7), (7, 8), (8, 11)):
        y, state = m(x[:, lo:hi], state)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, what="through the state")
    assert state["pos"].tolist() == [11, 11]
    small = x[:1, :6].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: m(v)[0], (small,))


@pytest.mark.parametrize("options", [{}, {"expand": 1.5, "conv_size": 2, "chunk_size": 5},
                                     {"bias": True, "reset_first": True, "chunk_size": 4}])
def test_model_any_split(options):
    assert_any_split(ModelConfig(mixer="rglru", d_model=32, n_layers=2, n_heads=2, mixer_options=options))


@pytest.mark.parametrize("options, message", [
    ({"expand": 0.01}, "expand=0.01"),
    ({"expand": 1.03}, "multiple of n_heads"),
    ({"conv_size": 0}, "conv_size=0"),
    ({"c": -1.0}, "c=-1.0"),
    ({"chunk_size": 0}, "chunk_size=0"),
    ({"reset_first": 1}, "reset_first=1: must be True or False"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError) as err:
        SeqMixLM(ModelConfig(mixer="rglru", d_model=32, n_layers=1, n_heads=2, mixer_options=options))
    assert message in str(err.value)


def test_op_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rglru"):
        op.chunked(torch.zeros(1, 4, 3), torch.zeros(1, 4, 2))
