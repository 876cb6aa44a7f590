"""The mlstm_large mixer (xLSTM-7B's mLSTM layer) against its recurrence written out in float64, without
stabilisation (the any-split invariant and packing run for every mixer in test_model.py / test_distributed.py)."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from seqmix.mixers import MIXERS

F64 = torch.float64


def _written_out(m, x):
    """The true (unstabilised) state C_t = f_t C_{t−1} + i_t k_t v_tᵀ, n_t = f_t n_{t−1} + i_t k_t (i = e^ĩ,
    f = σ(f̃), gates soft-capped) and h_t = e^{−m_t} C_tᵀ q̂_t / (e^{−m_t} max(|n_tᵀ q̂_t|, 1) + eps), q̂ = q / √d_qk,
    m_t = max(log f_t + m_{t−1}, ĩ_t), m_0 = 0: the stabilised form's output (its state is the true one times
    e^{−m_t})."""
    B, T, _ = x.shape
    H = m.n_heads
    dq, dv = m.widths[0] // H, m.widths[2] // H
    q, k, v, o = (x @ m.qkvo.weight.t()).split(m.widths, -1)
    gates = x @ m.gates.weight.t() + m.gates.bias
    if m.cap is not None:
        gates = m.cap * torch.tanh(gates / m.cap)
    log_i, log_f = gates[..., :H], F.logsigmoid(gates[..., H:])
    q, k, v = q.view(B, T, H, dq) / dq ** 0.5, k.view(B, T, H, dq), v.view(B, T, H, dv)
    C, n, mm = torch.zeros(B, H, dq, dv, dtype=F64), torch.zeros(B, H, dq, dtype=F64), torch.zeros(B, H, dtype=F64)
    outs = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None]
        C = log_f[:, t].exp()[..., None, None] * C + log_i[:, t].exp()[..., None, None] * kv
        n = log_f[:, t].exp()[..., None] * n + log_i[:, t].exp()[..., None] * k[:, t]
        mm = torch.maximum(log_f[:, t] + mm, log_i[:, t])
        num = (q[:, t, :, :, None] * C).sum(-2)
        den = torch.maximum((q[:, t] * n).sum(-1).abs(), torch.ones_like(mm)) * (-mm).exp() + m.eps
        outs.append(num * (-mm).exp()[..., None] / den[..., None])
    h = torch.stack(outs, 1)  # [B, T, H, dv]
    h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True) + m.norm_eps).sqrt()
    return (torch.sigmoid(o) * h.reshape(B, T, -1) * m.norm_weight) @ m.out.weight.t()


@pytest.mark.parametrize("options", [{"chunk_size": 4}, {"qk_dim": 6, "v_dim": 10, "gate_soft_cap": None,
                                                         "chunk_size": 8, "eps": 1e-3, "norm_eps": 1e-2}])
def test_mlstm_large_follows_its_recurrence_one_shot_and_through_the_state(options):
    torch.manual_seed(0)
    m = MIXERS.build("mlstm_large", 12, 2, options=options).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * (3.0 if p is m.gates.bias else 0.5))  # gates on both sides of their cap
    x = torch.randn(2, 17, 12, dtype=F64)
    expected = _written_out(m, x)
    y, none = m(x)
    assert none is None
    assert_close(y, expected, what="one shot")
    state, pieces = m.init_state(2), []
    for lo, hi in ((0, 1), (1, 6), (6, 7), (7, 16), (16, 17)):
        y, state = m(x[:, lo:hi], state)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, what="through the state")
    assert state["C"].shape == (2, 2, m.widths[0] // 2, m.widths[2] // 2)


def test_mlstm_large_gradients_are_exact():
    torch.manual_seed(0)
    m = MIXERS.build("mlstm_large", 8, 2, options={"chunk_size": 2}).double()
    x = torch.randn(1, 5, 8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))


@pytest.mark.parametrize("options, message", [
    ({"qk_dim": 5}, "qk_dim=5 and v_dim=16 must be divisible by n_heads=2"),
    ({"gate_soft_cap": 0.0}, r"gate_soft_cap=0.0: must be a number \(> 0\) or None"),
    ({"eps": -1.0}, "eps=-1.0"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        MIXERS.build("mlstm_large", 16, 2, options=options)
