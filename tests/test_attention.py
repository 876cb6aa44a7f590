"""The attention mixer's production settings (grouped-query heads, head width, QK-norm, partial and no RoPE,
output gate, biases) against attention written out here in float64, one shot and through the KV cache."""
import math

import pytest
import torch

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig
from seqmix.mixers import MIXERS

F64 = torch.float64
PRODUCTION = {"n_kv_heads": 2, "head_dim": 6, "qk_norm": "head", "rope_fraction": 0.34, "output_gate": True,
              "bias": True, "rope_theta": 500.0}


def _rotate_half(x, positions, theta):
    """RoPE pairing channel i with i + d/2 (transformers' rotate_half convention), d = x's last dimension."""
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=F64) / d)
    angles = positions[:, None].to(F64) * inv_freq
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * sin


def _reference(m, x, window=None):
    """softmax(q kᵀ / √d) v per query head, its key/value head h // (H / H_kv); every setting written out."""
    B, T, _ = x.shape
    H, Hkv, D = m.n_heads, m.n_kv_heads, m.head_dim
    W = m.qkv.weight
    proj = x @ W.T + (0 if m.qkv.bias is None else m.qkv.bias)
    q, k, v, *gate = proj.split(m.widths, -1)
    if m.qk_norm == "all":  # over every head's channels at once
        q = q / (q.square().mean(-1, keepdim=True) + m.q_norm.eps).sqrt() * m.q_norm.weight
        k = k / (k.square().mean(-1, keepdim=True) + m.k_norm.eps).sqrt() * m.k_norm.weight
    q, k, v = q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
    if m.qk_norm == "head":
        q = q / (q.square().mean(-1, keepdim=True) + m.q_norm.eps).sqrt() * m.q_norm.weight
        k = k / (k.square().mean(-1, keepdim=True) + m.k_norm.eps).sqrt() * m.k_norm.weight
    r, pos = m.rope_dims, torch.arange(T)
    if r:
        q = torch.cat([_rotate_half(q[..., :r].transpose(1, 2), pos, m.rope_theta).transpose(1, 2), q[..., r:]], -1)
        k = torch.cat([_rotate_half(k[..., :r].transpose(1, 2), pos, m.rope_theta).transpose(1, 2), k[..., r:]], -1)
    group = H // Hkv
    out = torch.empty(B, T, H, D, dtype=x.dtype)
    for h in range(H):
        scores = torch.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h // group]) / math.sqrt(D)
        allowed = torch.ones(T, T, dtype=torch.bool).tril()
        if window is not None:
            allowed &= ~torch.ones(T, T, dtype=torch.bool).tril(-window)
        out[:, :, h] = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, :, h // group]
    o = out.reshape(B, T, H * D)
    if gate:
        o = o * torch.sigmoid(gate[0])
    return o @ m.out.weight.T + (0 if m.out.bias is None else m.out.bias)


@pytest.mark.parametrize("options", [
    {}, PRODUCTION, {**PRODUCTION, "window": 5}, {"rope": False, "n_kv_heads": 1},
    {"n_kv_heads": 2, "output_gate": True}, {"qk_norm": "head", "head_dim": 12, "rope_fraction": 0.5},
    {"qk_norm": "all", "n_kv_heads": 2, "rope": False}])
def test_attention_settings_against_the_written_out_definition(options):
    torch.manual_seed(0)
    m = MIXERS.build("attention", 16, 4, options={"chunk_size": 4, **options}).double()
    with torch.no_grad():  # non-trivial norm weights and biases
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 13, 16, dtype=F64)
    expected = _reference(m, x, options.get("window"))
    assert_close(m(x)[0], expected, what="one shot")
    state = m.init_state(2)
    assert state["k"].shape == (2, m.n_kv_heads, 0, m.head_dim)  # the cache holds key/value heads only
    pieces = []
    for lo, hi in ((0, 1), (1, 6), (6, 7), (7, 13)):
        y, state = m(x[:, lo:hi], state)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, what="through the KV cache")


def test_production_attention_holds_the_any_split_invariant_in_a_model():
    assert_any_split(ModelConfig(mixer="attention", d_model=32, n_layers=2, n_heads=4, mixer_options=PRODUCTION))


@pytest.mark.parametrize("options, message", [
    ({"n_kv_heads": 3}, "n_kv_heads=3: must divide n_heads=4"),
    ({"rope_fraction": 0.1}, "rope_fraction=0.1"),
    ({"rope_fraction": 1.5}, r"rope_fraction=1.5: must be a number \(in \(0, 1\]\)"),
    ({"head_dim": 0}, "head_dim=0"),
    ({"qk_norm": "yes"}, r"qk_norm='yes': must be one of \['none', 'head', 'all'\]"),
])
def test_bad_attention_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        MIXERS.build("attention", 16, 4, options=options)
