"""Gated DeltaNet and DeltaNet mixers against the papers' recurrence written token by token here (the op's
forms are tested in test_delta_rule.py; the any-split invariant and packing run for every mixer elsewhere)."""
import pytest
import torch
import torch.nn.functional as F

from seqmix.mixers import MIXERS


def _paper_recurrence(m, x, beta_max=1.0):
    """S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ (value × key), o_t = S_t q_t / √d_k, then the output
    gate and projection, from the mixer's own layers."""
    B, T, _ = x.shape
    H, Hk, dk, dv = m.n_heads, m.n_k_heads, m.dk, m.dv
    qkv = torch.cat([m.q(x), m.k(x), m.v(x)], dim=-1)
    qkv = F.silu(m.conv(qkv)[0])
    q, k, v = qkv.split([Hk * dk, Hk * dk, H * dv], dim=-1)
    q, k = (t.view(B, T, Hk, dk).repeat_interleave(H // Hk, dim=2) for t in (q, k))  # key head j serves j·r …
    q, k = (t / (t.square().sum(-1, keepdim=True) + 1e-6).sqrt() for t in (q, k))  # flash-linear-attention's L2 norm
    v = v.view(B, T, H, dv)
    beta = torch.sigmoid(m.beta(x)) * beta_max  # [B, T, H]; (0, 2) allows negative eigenvalues
    alpha = torch.exp(-torch.exp(m.A_log) * F.softplus(m.alpha(x) + m.dt_bias)) if m.gate else torch.ones_like(beta)
    S = x.new_zeros(B, H, dv, dk)
    eye = torch.eye(dk, dtype=x.dtype)
    outs = []
    for t in range(T):
        kt, bt, at = k[:, t], beta[:, t, :, None, None], alpha[:, t, :, None, None]
        S = at * S @ (eye - bt * kt[..., :, None] * kt[..., None, :]) + bt * v[:, t, :, :, None] * kt[..., None, :]
        outs.append((S @ q[:, t, :, :, None])[..., 0] * dk ** -0.5)
    o = torch.stack(outs, dim=1).reshape(B, T, H * dv)
    return m.out(m.norm(o, m.out_gate(x)))


@pytest.mark.parametrize("name, options", [("gated_deltanet", {}), ("deltanet", {}),
                                           ("gated_deltanet", {"head_dim_v": 16, "chunk_size": 8}),
                                           ("gated_deltanet", {"n_k_heads": 1, "head_dim_k": 6, "head_dim_v": 10}),
                                           ("deltanet", {"allow_neg_eigval": True})])
def test_mixer_follows_the_papers_recurrence(name, options):
    torch.manual_seed(0)
    m = MIXERS.build(name, 16, 2, options={"chunk_size": 4, **options}).double()
    x = torch.randn(2, 19, 16, dtype=torch.float64)  # 19: not a multiple of the chunk
    expected = _paper_recurrence(m, x, 2.0 if options.get("allow_neg_eigval") else 1.0)
    assert torch.allclose(m(x)[0], expected, atol=1e-10, rtol=0)
    state = m.init_state(2)  # and through the state in uneven pieces, down to single tokens
    pieces = []
    for lo, hi in ((0, 5), (5, 6), (6, 13), (13, 19)):
        y, state = m(x[:, lo:hi], state)
        pieces.append(y)
    assert torch.allclose(torch.cat(pieces, 1), expected, atol=1e-10, rtol=0)


def test_gradients_of_the_chunked_form_are_exact():
    torch.manual_seed(0)
    m = MIXERS.build("gated_deltanet", 8, 2, options={"chunk_size": 4, "d_conv": 2}).double()
    x = torch.randn(1, 7, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))


@pytest.mark.parametrize("name, options, message", [
    ("gated_deltanet", {"chunk_size": 12}, r"chunk_size=12: must be an integer \(a power of two\)"),
    ("gated_deltanet", {"n_k_heads": 3}, "n_k_heads=3: must divide n_heads=2"),
    ("gated_deltanet", {"gate": 1}, "gate=1: must be True or False"),
    ("deltanet", {"gate": True}, "unknown option"),
    ("deltanet", {"head_dim_v": 0.5}, "head_dim_v=0.5"),
    ("gated_deltanet", {"d_conv": -1}, "d_conv=-1"),
])
def test_bad_options_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message):
        MIXERS.build(name, 16, 2, options=options)


@pytest.mark.parametrize("name", ["gated_deltanet", "deltanet"])
def test_inference_in_pieces_equals_one_pass(name):
    """Outside autograd a sequence longer than ``piece`` runs piece by piece through the state: same outputs and
    final state as one pass (piece 5: not a multiple of the chunk; the last piece is a single token)."""
    torch.manual_seed(0)
    m = MIXERS.build(name, 16, 2, options={"chunk_size": 4}).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    with torch.no_grad():
        expected, expected_state = m(x, m.init_state(2))
        m.piece = 5
        y, state = m(x, m.init_state(2))
        assert torch.allclose(m(x)[0], expected, atol=1e-12, rtol=0)
    assert torch.allclose(y, expected, atol=1e-12, rtol=0)
    for key in expected_state:
        assert torch.allclose(state[key], expected_state[key], atol=1e-12, rtol=0)
