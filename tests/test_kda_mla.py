"""Kimi Delta Attention and multi-head latent attention, each against its definition written out here in
float64 (the any-split invariant and packing run for every mixer in test_model.py / test_distributed.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_mixer_matches
from seqmix.mixers import MIXERS

F64 = torch.float64


def _kda_per_token(m, x):
    """S_t = (I − β_t k_t k_tᵀ) diag(α_t) S_{t−1} + β_t k_t v_tᵀ, o_t = S_tᵀ q_t / √d, token by token."""
    B, T, _ = x.shape
    H, d = m.n_heads, m.head_dim
    q, k, v = F.silu(m.conv(torch.cat([m.q(x), m.k(x), m.v(x)], -1))[0]).split(H * d, -1)
    q, k = (t.view(B, T, H, d) for t in (q, k))
    q, k = (t / (t.square().sum(-1, keepdim=True) + 1e-6).sqrt() for t in (q, k))
    v = v.view(B, T, H, d)
    beta = torch.sigmoid(m.beta(x))
    log_alpha = -torch.exp(m.A_log)[:, None] * F.softplus(m.decay_up(m.decay_down(x)) + m.dt_bias).view(B, T, H, d)
    S = torch.zeros(B, H, d, d, dtype=x.dtype)
    eye = torch.eye(d, dtype=x.dtype)
    outs = []
    for t in range(T):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        S = (eye - bt * kt[..., :, None] * kt[..., None, :]) @ (log_alpha[:, t].exp()[..., None] * S) \
            + bt * kt[..., :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, None, :] @ S)[:, :, 0] / math.sqrt(d))
    o = torch.stack(outs, 1).reshape(B, T, H * d)
    gate = torch.sigmoid(m.gate_up(m.gate_down(x)))
    normed = o.view(B, T, H, d) / (o.view(B, T, H, d).square().mean(-1, keepdim=True) + m.norm.eps).sqrt()
    return m.out(normed.reshape(B, T, H * d) * m.norm.weight * gate)


@pytest.mark.parametrize("options", [{"chunk_size": 4}, {"head_dim": 6, "gate_rank": 3, "d_conv": 2, "chunk_size": 8}])
def test_kda_follows_its_recurrence_one_shot_and_through_the_state(options):
    torch.manual_seed(0)
    m = MIXERS.build("kda", 16, 2, options=options).double()
    x = torch.randn(2, 19, 16, dtype=F64)
    assert_mixer_matches(m, x, _kda_per_token(m, x))


def test_kda_gradients_are_exact():
    torch.manual_seed(0)
    m = MIXERS.build("kda", 8, 2, options={"chunk_size": 4, "d_conv": 2}).double()
    x = torch.randn(1, 7, 8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))


def _mla_reference(m, x):
    """Keys and values expanded from the latents, RoPE (rotate-half) on the rotary parts, causal softmax."""
    B, T, _ = x.shape
    H, dn, dr, dv = m.n_heads, m.nope_dim, m.rope_dim, m.v_dim
    q = m.q(m.q_norm(m.q_down(x)) if hasattr(m, "q_down") else x).view(B, T, H, dn + dr)
    c, kr = m.kv_down(x).split([m.kv_rank, dr], -1)
    c = c / (c.square().mean(-1, keepdim=True) + m.kv_norm.eps).sqrt() * m.kv_norm.weight
    kv = m.kv_up(c).view(B, T, H, dn + dv)
    k = torch.cat([kv[..., :dn], kr[:, :, None].expand(B, T, H, dr)], -1)
    if m.rope:
        angles = torch.arange(T, dtype=F64)[:, None] * m.rope_theta ** (-torch.arange(0, dr, 2, dtype=F64) / dr)
        cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]

        def rotate(t):
            return t * cos + torch.cat([-t[..., dr // 2:], t[..., :dr // 2]], -1) * sin
        q = torch.cat([q[..., :dn], rotate(q[..., dn:])], -1)
        k = torch.cat([k[..., :dn], rotate(k[..., dn:])], -1)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(dn + dr)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    o = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), kv[..., dn:])
    return m.out(o.reshape(B, T, H * dv))


@pytest.mark.parametrize("options", [{}, {"q_rank": 6, "rope": False, "bias": True, "v_dim": 5, "kv_rank": 7},
                                     {"nope_dim": 4, "rope_dim": 6, "chunk_size": 3}])
def test_mla_against_the_expanded_definition_and_its_latent_cache(options):
    torch.manual_seed(0)
    m = MIXERS.build("mla", 16, 2, options=options).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 13, 16, dtype=F64)
    assert_mixer_matches(m, x, _mla_reference(m, x), pieces=((0, 1), (1, 6), (6, 7), (7, 13)))
    state = m(x, m.init_state(2))[1]
    assert state["c"].shape == (2, 13, m.kv_rank) and state["k_rope"].shape == (2, 13, m.rope_dim)


@pytest.mark.parametrize("name, options, message", [
    ("mla", {"rope_dim": 3}, "rope_dim=3: RoPE needs an even number"),
    ("mla", {"kv_rank": 0}, r"kv_rank=0: must be an integer \(> 0\) or None"),
    ("kda", {"chunk_size": 6}, "chunk_size=6"),
    ("kda", {"gate_rank": -1}, "gate_rank=-1"),
])
def test_bad_options_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message):
        MIXERS.build(name, 16, 2, options=options)


def test_mla_gradients_are_exact():
    torch.manual_seed(0)
    m = MIXERS.build("mla", 8, 2, options={"kv_rank": 4, "q_rank": 3, "rope_dim": 2}).double()
    x = torch.randn(1, 6, 8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))
