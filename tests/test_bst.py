import pytest
import torch

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.layers import apply_rope
from seqmix.mixers.base import MIXERS
from seqmix.ops import block_attention as op

VARIANTS = ["sh", "mh", "mf"]


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("r, T, W", [(0, 1, 4), (0, 13, 4), (0, 8, 4), (3, 1, 4), (3, 1, 5), (2, 11, 5), (0, 9, 1),
                                     (4, 30, 7)])
def test_block_attention_forms_agree(r, T, W):
    B, H, D, S = 2, 3, 4, 5
    q, k, v, qc = (rand(B, H, T, D) for _ in range(4))
    NB = -(-(r + T) // W)
    ck, cv = rand(B, H, NB, S, D), rand(B, H, NB, S, D)
    cache = (rand(B, H, r, D), rand(B, H, r, D)) if r else None
    want, (kw, vw) = op.parallel(q, k, v, qc, ck, cv, W, cache)
    got, (kg, vg) = op.chunked(q, k, v, qc, ck, cv, W, cache)
    assert_close(got, want)
    assert_close(kg, kw) and assert_close(vg, vw)
    assert kw.shape[2] == (r + T) % W
    # token by token: each step uses the context of its own block
    state, outs = cache, []
    for t in range(T):
        out, state = op.step(q[:, :, t], k[:, :, t], v[:, :, t], qc[:, :, t], ck[:, :, (r + t) // W],
                             cv[:, :, (r + t) // W], W, state)
        outs.append(out)
    assert_close(torch.stack(outs, dim=2), want)
    assert_close(state[0], kw) and assert_close(state[1], vw)


def test_block_attention_is_block_local():
    """Self-attention never crosses a block boundary: keys of an earlier block leave the output unchanged."""
    B, H, T, D, W = 1, 1, 12, 4, 4
    q, k, v, qc = (rand(B, H, T, D) for _ in range(4))
    ck, cv = rand(B, H, 3, 2, D), rand(B, H, 3, 2, D)
    base, _ = op.chunked(q, k, v, qc, ck, cv, W)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :4] += 1.0
    v2[:, :, :4] += 1.0
    moved, _ = op.chunked(q, k2, v2, qc, ck, cv, W)
    assert_close(moved[:, :, 4:], base[:, :, 4:])
    assert (moved[:, :, :4] - base[:, :, :4]).abs().max() > 1e-3


def test_block_attention_gradcheck_and_errors():
    B, H, T, D, W = 1, 2, 6, 3, 4
    args = tuple(rand(B, H, T, D).requires_grad_() for _ in range(4)) + tuple(
        rand(B, H, 2, 2, D).requires_grad_() for _ in range(2))
    assert torch.autograd.gradcheck(lambda *a: op.chunked(*a, W)[0], args)
    with pytest.raises(ValueError, match="context for 1"):
        op.chunked(*(a.detach() for a in args[:4]), args[4][:, :, :1].detach(), args[5][:, :, :1].detach(), W)


def ssm_outputs_by_recurrence(mixer, x):
    """y_t = 2 Re(Σ_n C_n s_t[n]), s_t = Ā s_{t-1} + B̄ u_t, one token at a time (ZOH, the S4D definition)."""
    A = torch.complex(-mixer.log_A_real.exp(), mixer.A_imag)
    dtA = mixer.log_dt.exp()[:, None] * A
    A_bar, B_bar = dtA.exp(), torch.expm1(dtA) / A
    C = torch.view_as_complex(mixer.C)
    u = x.repeat(1, 1, mixer.filters)  # filter f of channel c at f·d + c
    s = torch.zeros(x.shape[0], u.shape[-1], mixer.modes, dtype=A.dtype)
    ys = []
    for t in range(x.shape[1]):
        s = A_bar * s + B_bar * u[:, t, :, None]
        ys.append(2 * (C * s).sum(-1).real)
    return torch.stack(ys, dim=1)


def bst_oracle(mixer, x):
    """The BST layer from its definition, one query at a time."""
    B, T, d = x.shape
    W, H, S = mixer.block_size, mixer.n_heads, mixer.n_context
    y = ssm_outputs_by_recurrence(mixer, x)

    def context(b):  # raw context states [B, S, d] of block b: only SSM outputs at positions < bW
        if b == 0:
            return x.new_zeros(B, S, d)
        if mixer.variant == "sh":
            return y[:, (b - 1) * W:b * W]
        last = y[:, b * W - 1]
        return (mixer.heads(last) if mixer.variant == "mh" else last).view(B, S, d)

    heads = lambda t: t.view(*t.shape[:-1], H, -1)
    q, k, v = (heads(t) for t in mixer.qkv(x).chunk(3, dim=-1))  # [B, T, H, D]
    pos = torch.arange(T)
    q = apply_rope(q.transpose(1, 2), pos).transpose(1, 2)
    k = apply_rope(k.transpose(1, 2), pos).transpose(1, 2)
    qc = heads(mixer.q_ctx(x))
    scale = (d // H) ** -0.5
    outs = []
    for t in range(T):
        b = t // W
        ks, vs = k[:, b * W:t + 1], v[:, b * W:t + 1]  # [B, n, H, D]
        o = torch.einsum("bns,bnsd->bsd", torch.softmax(scale * torch.einsum("bsd,bnsd->bns", q[:, t], ks), 1), vs)
        ck, cv = (heads(z) for z in mixer.kv_ctx(context(b)).chunk(2, dim=-1))  # [B, S, H, D]
        c = torch.einsum("bns,bnsd->bsd", torch.softmax(scale * torch.einsum("bsd,bnsd->bns", qc[:, t], ck), 1), cv)
        outs.append(mixer.out(torch.cat([o, c], dim=-1).flatten(1)))
    return torch.stack(outs, dim=1)


def build(variant, W=4, d=8, H=2, **options):
    torch.manual_seed(0)
    return MIXERS.build("bst", d, H, options={"variant": variant, "block_size": W, "n_context": 3, "d_state": 6,
                                              **options}, layer_idx=0, n_layers=1).double()


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixer_matches_the_per_token_oracle_in_every_form(variant):
    mixer = build(variant, W=4)
    x = rand(2, 14, 8)
    want = bst_oracle(mixer, x)
    with torch.no_grad():
        assert_close(mixer(x)[0], want)
        state, outs = mixer.init_state(2), []
        for t in range(14):  # the step form, through block boundaries
            out, state = mixer(x[:, t:t + 1], state)
            outs.append(out)
        assert_close(torch.cat(outs, dim=1), want)
        state, outs = mixer.init_state(2), []
        for a, b in [(0, 3), (3, 9), (9, 10), (10, 14)]:  # pieces cut off the block grid
            out, state = mixer(x[:, a:b], state)
            outs.append(out)
        assert_close(torch.cat(outs, dim=1), want)
    assert state["k"].shape[2] == 14 % 4 and state["ctx"].shape == (2, mixer.n_context, 8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_changing_token_t_changes_no_earlier_output(variant):
    mixer = build(variant, W=4)
    x = rand(1, 13, 8)
    base = mixer(x)[0].detach()
    for t in (0, 5, 8, 12):
        x2 = x.clone()
        x2[:, t] += 1.0
        moved = mixer(x2)[0].detach()
        assert_close(moved[:, :t], base[:, :t])
        assert (moved[:, t] - base[:, t]).abs().max() > 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_context_states_come_only_from_earlier_blocks(variant):
    """With the self-attention silenced, a token's output depends on itself (its queries) and on its block's
    context; changing token t must leave every other token of its block unchanged, later blocks not."""
    mixer = build(variant, W=4)
    with torch.no_grad():
        mixer.qkv.weight.zero_()
    x = rand(1, 12, 8)
    base = mixer(x)[0].detach()
    for t in (1, 4, 6):
        x2 = x.clone()
        x2[:, t] += 1.0
        moved = mixer(x2)[0].detach()
        block = range(t // 4 * 4, t // 4 * 4 + 4)
        others = [s for s in block if s != t]
        assert_close(moved[:, others], base[:, others])
        later = moved[:, block.stop:] - base[:, block.stop:]
        assert later.abs().amax(-1).min() > 1e-8, "every later token should see the change through its context"


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_any_split(variant):
    assert_any_split(ModelConfig(mixer="bst", d_model=32, n_layers=2, n_heads=2,
                                 mixer_options={"variant": variant, "block_size": 5, "d_state": 8}))


def test_model_any_split_with_chunked_ssm_and_block_of_one():
    assert_any_split(ModelConfig(mixer="bst", d_model=16, n_layers=1, n_heads=2,
                                 mixer_options={"block_size": 1, "ssm_chunk_size": 6, "rope": False}))


def test_mixer_gradcheck():
    mixer = build("mh", W=3, d=4, H=2)
    x = rand(1, 7, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mixer(x)[0], (x,))


@pytest.mark.parametrize("variant", VARIANTS)
def test_long_sequence_float32(variant):
    torch.manual_seed(0)
    mixer = MIXERS.build("bst", 8, 2, options={"variant": variant, "block_size": 64, "n_context": 2, "d_state": 8},
                         layer_idx=0, n_layers=1)
    x = torch.randn(1, 4096, 8)
    with torch.no_grad():
        y = mixer(x)[0]
        y64 = mixer.double()(x.double())[0]
    assert torch.isfinite(y).all()
    assert_close(y.double(), y64, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("options, message", [
    ({"variant": "xx"}, "variant='xx'"),
    ({"block_size": 0}, "block_size=0"),
    ({"n_context": 0}, "n_context=0"),
    ({"d_state": 3}, "d_state=3"),
    ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min=0.5"),
    ({"ssm_chunk_size": 0}, "ssm_chunk_size=0"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError) as err:
        SeqMixLM(ModelConfig(mixer="bst", d_model=32, n_layers=1, n_heads=2, mixer_options=options))
    assert message in str(err.value)
