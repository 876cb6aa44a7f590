"""RWKV-4 WKV, RWKV-6 WKV, the RWKV mixers and the channel-mix FFN: forms agree, stability, any-split."""
import pytest
import torch

from helpers import SPLITS, assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.layers import token_shift
from seqmix.mixers.rwkv7 import V_FIRST
from seqmix.ops import rwkv6, wkv4

F64 = torch.float64


# ---------------------------------------------------------------- RWKV-4 WKV

def _wkv4_inputs(B=2, H=2, T=37, D=5, dtype=F64, key_scale=3.0):
    k = torch.randn(B, H, T, D, dtype=dtype) * key_scale
    v = torch.randn(B, H, T, D, dtype=dtype)
    w = torch.empty(H, D, dtype=dtype).uniform_(-5, 3).exp()  # exp(time_decay), the official init's range
    u = torch.randn(H, D, dtype=dtype)
    return k, v, w, u


def _wkv4_naive(k, v, w, u):
    """The paper's formula term by term, no stabilisation (float64, moderate keys)."""
    T = k.shape[2]
    outs = []
    for t in range(T):
        num = (u + k[:, :, t]).exp() * v[:, :, t]
        den = (u + k[:, :, t]).exp()
        for i in range(t):
            e = (-(t - 1 - i) * w + k[:, :, i]).exp()
            num, den = num + e * v[:, :, i], den + e
        outs.append(num / den)
    return torch.stack(outs, 2)


def _wkv4_steps(k, v, w, u, state=None):
    outs = []
    for t in range(k.shape[2]):
        o, state = wkv4.step(k[:, :, t], v[:, :, t], w, u, state)
        outs.append(o)
    return torch.stack(outs, 2), state


@pytest.mark.parametrize("T", [1, 15, 37])
def test_wkv4_forms_match_the_naive_formula(T):
    k, v, w, u = _wkv4_inputs(T=T)
    expected = _wkv4_naive(k, v, w, u)
    o_par, s_par = wkv4.parallel(k, v, w, u)
    o_stp, s_stp = _wkv4_steps(k, v, w, u)
    assert_close(o_par, expected, what="parallel")
    assert_close(o_stp, expected, what="max-trick step")
    for C in (1, 4, 16, 64):
        o_chk, s_chk = wkv4.chunked(k, v, w, u, chunk_size=C)
        assert_close(o_chk, expected, what=f"chunked C={C}")
        for x, y in zip(s_chk, s_par):
            assert_close(x, y, what=f"chunked C={C} state")
    for x, y in zip(s_stp, s_par):
        assert_close(x, y, what="step state")


def test_wkv4_state_cut_at_unaligned_positions():
    k, v, w, u = _wkv4_inputs(T=70)
    expected = _wkv4_naive(k, v, w, u)
    for form in ("parallel", "chunked", "step"):
        state, outs = None, []
        for a, b in [(0, 7), (7, 40), (40, 41), (41, 70)]:
            ks, vs = k[:, :, a:b], v[:, :, a:b]
            if form == "parallel":
                o, state = wkv4.parallel(ks, vs, w, u, state)
            elif form == "chunked":
                o, state = wkv4.chunked(ks, vs, w, u, state, chunk_size=16)
            else:
                o, state = _wkv4_steps(ks, vs, w, u, state)
            outs.append(o)
        assert_close(torch.cat(outs, 2), expected, what=form)


@pytest.mark.parametrize("huge", [False, True])
def test_wkv4_float32_long_sequence(huge):
    torch.manual_seed(1)
    T = 8192
    k, v, w, u = _wkv4_inputs(B=1, H=1, T=T, D=4, dtype=torch.float32)
    if huge:
        k, u = 60 + 30 * k, 20 * u  # keys up to ~200: e^k overflows float32 (max ~e^88.7)
        assert torch.isinf(k.exp()).any(), "the keys must be large enough to break an unstabilised WKV"
    # Exponents near 200 are resolved to float32's ulp(200) ≈ 1.5e-5, and the step form rounds p - w once
    # per token (as the official kernel), so its error grows with T; hence the looser bounds for huge keys.
    tol_chunked, tol_step = (1e-3, 1e-2) if huge else (1e-5, 1e-4)
    ref, ref_state = wkv4.chunked(k.double(), v.double(), w.double(), u.double(), chunk_size=32)
    o, state = wkv4.chunked(k, v, w, u, chunk_size=32)
    assert o.dtype == torch.float32 and state[0].dtype == torch.float32
    assert_close(o.double(), ref, atol=tol_chunked, rtol=tol_chunked, what="chunked float32 vs float64")
    o_stp, s_stp = _wkv4_steps(k, v, w, u)
    assert_close(o_stp.double(), ref, atol=tol_step, rtol=tol_step, what="step float32 vs float64")
    drift = T * 2.0 ** -24 * ref_state[2].abs().max().item()  # at most half an ulp of |p| per token
    assert_close(s_stp[2].double(), ref_state[2], atol=drift, what="p")
    n = 1024  # the materialised form is [T, T, D]; check it at a length that fits
    o_par, _ = wkv4.parallel(k[:, :, :n], v[:, :, :n], w, u)
    assert_close(o_par.double(), ref[:, :, :n], atol=tol_chunked, rtol=tol_chunked, what="parallel float32")


def test_wkv4_half_precision_inputs_keep_a_float32_state():
    k, v, w, u = _wkv4_inputs(T=9, dtype=torch.bfloat16)
    o, (a, b, p) = wkv4.chunked(k, v, w, u, chunk_size=4)
    assert o.dtype == torch.bfloat16 and a.dtype == b.dtype == p.dtype == torch.float32
    assert torch.isfinite(o).all() and torch.isfinite(p).all()


def test_wkv4_chunked_gradcheck():
    k, v, w, u = _wkv4_inputs(B=1, H=1, T=11, D=3)
    a0, b0 = torch.randn(1, 1, 3, dtype=F64), torch.rand(1, 1, 3, dtype=F64) + 1
    p0 = torch.randn(1, 1, 3, dtype=F64)
    args = [t.requires_grad_() for t in (k, v, w, u, a0, b0, p0)]

    def f(k, v, w, u, a0, b0, p0):
        o, (a, b, p) = wkv4.chunked(k, v, w, u, (a0, b0, p0), chunk_size=4)
        return o, a, b, p

    assert torch.autograd.gradcheck(f, args)


# ---------------------------------------------------------------- RWKV-6 WKV

def _rwkv6_inputs(B=2, H=3, T=37, Dk=8, Dv=5, dtype=F64):
    r, k = torch.randn(2, B, H, T, Dk, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    log_w = -torch.rand(B, H, T, Dk, dtype=dtype) * 2
    u = torch.randn(H, Dk, dtype=dtype)
    return r, k, v, log_w, u


def _rwkv6_definition(r, k, v, log_w, u, S):
    """Per token, as the official kernel: read S (with the bonus for the current token), then update."""
    outs = []
    for t in range(r.shape[2]):
        rt, kt, vt = r[:, :, t], k[:, :, t], v[:, :, t]
        kv = kt.unsqueeze(-1) * vt.unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", rt, S + u.unsqueeze(-1) * kv))
        S = log_w[:, :, t].exp().unsqueeze(-1) * S + kv
    return torch.stack(outs, 2), S


def _rwkv6_steps(r, k, v, log_w, u, S):
    outs = []
    for t in range(r.shape[2]):
        o, S = rwkv6.step(r[:, :, t], k[:, :, t], v[:, :, t], log_w[:, :, t], u, S)
        outs.append(o)
    return torch.stack(outs, 2), S


@pytest.mark.parametrize("T", [1, 15, 16, 37, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_rwkv6_forms_agree_with_the_definition(T, chunk_size):
    r, k, v, log_w, u = _rwkv6_inputs(T=T)
    S0 = torch.randn(2, 3, 8, 5, dtype=F64)
    expected, S_end = _rwkv6_definition(r, k, v, log_w, u, S0)
    for name, (o, S) in {"parallel": rwkv6.parallel(r, k, v, log_w, u, S0),
                         "chunked": rwkv6.chunked(r, k, v, log_w, u, S0, chunk_size=chunk_size),
                         "step": _rwkv6_steps(r, k, v, log_w, u, S0)}.items():
        assert_close(o, expected, what=f"{name} output")
        assert_close(S, S_end, what=f"{name} state")


def test_rwkv6_state_cut_at_unaligned_positions():
    r, k, v, log_w, u = _rwkv6_inputs(T=100)
    full, S_full = rwkv6.chunked(r, k, v, log_w, u, chunk_size=32)
    S, outs = None, []
    for a, b in [(0, 7), (7, 40), (40, 41), (41, 100)]:
        o, S = rwkv6.chunked(r[:, :, a:b], k[:, :, a:b], v[:, :, a:b], log_w[:, :, a:b], u, S, chunk_size=32)
        outs.append(o)
    assert_close(torch.cat(outs, 2), full)
    assert_close(S, S_full)


def test_rwkv6_chunked_gradcheck():
    r, k, v, log_w, u = _rwkv6_inputs(B=1, H=2, T=11, Dk=3, Dv=2)
    S0 = torch.randn(1, 2, 3, 2, dtype=F64)
    args = [t.requires_grad_() for t in (r, k, v, log_w, u, S0)]
    assert torch.autograd.gradcheck(lambda *a: rwkv6.chunked(*a, chunk_size=4), args)


def test_rwkv6_float32_long_sequence():
    r, k, v, _, u = _rwkv6_inputs(B=1, H=1, T=8192, Dk=4, Dv=4, dtype=torch.float32)
    for log_w in (torch.full((1, 1, 8192, 4), -20.0), torch.full((1, 1, 8192, 4), -1e-3)):
        o, S = rwkv6.chunked(r, k, v, log_w, u, chunk_size=64)
        ref, S_ref = rwkv6.chunked(r.double(), k.double(), v.double(), log_w.double(), u.double(), chunk_size=64)
        assert_close(o.double(), ref, atol=1e-3, rtol=1e-4, what="float32 vs float64")
        assert_close(S.double(), S_ref, atol=1e-3, rtol=1e-4, what="float32 state")


# ---------------------------------------------------------------- token shift, mixers, channel-mix

def test_token_shift_carries_the_previous_token():
    x = torch.randn(2, 5, 3)
    prev, last = token_shift(x)
    assert_close(prev[:, 0], torch.zeros(2, 3))
    assert_close(prev[:, 1:], x[:, :-1])
    assert_close(last, x[:, -1])
    prev2, _ = token_shift(x[:, 2:], token_shift(x[:, :2])[1])
    assert_close(prev2, prev[:, 2:])


def assert_any_split_perturbed(config: ModelConfig, noise: float = 0.3, length: int = 37, batch: int = 2):
    """helpers.assert_any_split on a model whose parameters are all perturbed: zero-initialised branches
    (the low-rank data-dependent shifts, decays and gates) then take part in the check."""
    torch.manual_seed(0)
    model = SeqMixLM(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    tokens = torch.randint(0, config.vocab_size, (batch, length))
    with torch.no_grad():
        reference = model(tokens)
        for pieces in SPLITS:
            state, outs, pos = model.init_state(batch), [], 0
            for n in list(pieces) + [length]:
                if pos >= length:
                    break
                logits, state = model(tokens[:, pos:pos + n], state=state)
                outs.append(logits)
                pos += n
            assert_close(torch.cat(outs, 1), reference, what=f"{config.mixer} split {pieces}")


@pytest.mark.parametrize("mixer, options", [
    ("rwkv4", {}), ("rwkv4", {"chunk_size": 5}),
    ("rwkv6", {}), ("rwkv6", {"head_size": 8, "chunk_size": 16}),
    ("rwkv7", {}), ("rwkv7", {"head_size": 8, "chunk_size": 16}),
])
def test_rwkv_mixers_any_split_with_perturbed_weights(mixer, options):
    assert_any_split_perturbed(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2, mixer_options=options))


@pytest.mark.parametrize("mixer", ["rwkv4", "rwkv7"])
def test_model_with_channel_mix_ffn_any_split(mixer):
    config = ModelConfig(mixer=mixer, ffn="rwkv_cmix", d_model=32, n_layers=2, n_heads=2)
    model = assert_any_split(config)
    assert model.init_state(3)[0]["ffn"]["shift"].shape == (3, 32)
    assert_any_split_perturbed(config)


def test_head_size_option_and_fallback():
    wide = SeqMixLM(ModelConfig(mixer="rwkv6", d_model=128, n_heads=4, n_layers=1))
    assert (wide.blocks[0].mixer.H, wide.blocks[0].mixer.N) == (2, 64), "RWKV's head size 64 when it divides"
    small = SeqMixLM(ModelConfig(mixer="rwkv7", d_model=32, n_heads=2, n_layers=1))
    assert (small.blocks[0].mixer.H, small.blocks[0].mixer.N) == (2, 16), "the model's own split otherwise"
    custom = SeqMixLM(ModelConfig(mixer="rwkv7", d_model=32, n_heads=2, n_layers=1, mixer_options={"head_size": 8}))
    assert custom.init_state(1)[0]["mixer"]["S"].shape == (1, 4, 8, 8)


@pytest.mark.parametrize("mixer, options, message", [
    ("rwkv6", {"head_size": 0}, "head_size=0"),
    ("rwkv7", {"head_size": "64"}, "head_size='64'"),
    ("rwkv6", {"mix_rank": 0}, "mix_rank=0"),
    ("rwkv4", {"chunk_size": 0}, "chunk_size=0"),
    ("rwkv7", {"chunk_size": -1}, "chunk_size=-1"),
])
def test_bad_options_name_the_option(mixer, options, message):
    with pytest.raises(ValueError, match=message):
        SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_heads=2, n_layers=1, mixer_options=options))
    with pytest.raises(ValueError, match="hidden=0"):
        SeqMixLM(ModelConfig(mixer="rwkv4", ffn="rwkv_cmix", ffn_options={"hidden": 0}, d_model=32, n_heads=2))


def test_rwkv7_value_residual_comes_from_the_first_layer():
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer="rwkv7", d_model=32, n_heads=2, n_layers=3)).double()
    first, second = model.blocks[0].mixer, model.blocks[1].mixer
    assert not hasattr(first, "v0") and hasattr(second, "v0")
    x = torch.randn(2, 9, 32, dtype=F64)
    shared = {}
    first(x, shared=shared)
    x_prev = token_shift(x)[0]
    assert_close(shared[V_FIRST], first.value(x + (x_prev - x) * first.mu[3]), what="layer 0 stores its values")
    with torch.no_grad():
        second.v0.fill_(50.0)  # σ ≈ 1: the second layer's values become the first layer's
    y1, _ = second(x, shared=dict(shared))
    y2, _ = second(x, shared={V_FIRST: shared[V_FIRST] + torch.randn_like(shared[V_FIRST])})
    assert (y1 - y2).abs().max() > 1e-3, "the later layer must read v_first"


def test_rwkv4_mixer_float32_long_sequence_with_large_weights():
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer="rwkv4", ffn="rwkv_cmix", d_model=8, n_heads=1, n_layers=1))
    mixer = model.blocks[0].mixer
    with torch.no_grad():
        mixer.key.weight.mul_(200.0)  # keys in the hundreds
        mixer.time_first.mul_(30.0)
    x = torch.randn(1, 8192, 8)
    y, _ = mixer(x)
    y64, _ = mixer.double()(x.double())
    assert torch.isfinite(y).all()
    assert_close(y.double(), y64, atol=1e-3, rtol=1e-3, what="float32 vs float64")
