"""The short_conv mixer (LFM2's gated short convolution) against the block written out in float64 (the any-split
invariant and packing run for every mixer in test_model.py / test_distributed.py)."""
import pytest
import torch

from helpers import assert_close
from seqmix.mixers import MIXERS

F64 = torch.float64


def _written_out(m, x):
    """[b, c, u] = W_in x;  z_t = Σ_{j<K} w_j ⊙ (b ⊙ u)_{t−K+1+j} (+ conv bias);  y = W_out (c ⊙ z)."""
    W_in, W_out = m.in_proj.weight, m.out.weight
    w, K = m.conv.conv.weight[:, 0], m.conv.kernel_size  # [C, K]
    h = x @ W_in.t() + (0 if m.in_proj.bias is None else m.in_proj.bias)
    b, c, u = h.split(m.d_model, -1)
    bu = b * u
    z = torch.zeros_like(bu)
    for t in range(x.shape[1]):
        for j in range(K):
            s = t - K + 1 + j
            if s >= 0:
                z[:, t] += w[:, j] * bu[:, s]
    if m.conv.conv.bias is not None:
        z = z + m.conv.conv.bias
    return (c * z) @ W_out.t() + (0 if m.out.bias is None else m.out.bias)


@pytest.mark.parametrize("options", [{}, {"d_conv": 5, "bias": True}, {"d_conv": 1}])
def test_short_conv_is_the_gated_convolution_one_shot_and_through_the_state(options):
    torch.manual_seed(0)
    m = MIXERS.build("short_conv", 12, 2, options=options).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # biases away from zero
    x = torch.randn(2, 17, 12, dtype=F64)
    expected = _written_out(m, x)
    y, state = m(x)
    assert state is None
    assert_close(y, expected, what="one shot")
    state, pieces = m.init_state(2), []
    assert state["conv"].shape == (2, m.conv.kernel_size - 1, 12)
    for lo, hi in ((0, 1), (1, 3), (3, 4), (4, 11), (11, 12), (12, 17)):
        y, state = m(x[:, lo:hi], state)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, what="through the state")


def test_short_conv_gradients_are_exact():
    torch.manual_seed(0)
    m = MIXERS.build("short_conv", 6, 1, options={"d_conv": 3, "bias": True}).double()
    x = torch.randn(2, 5, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: m(x)[0], (x, *m.parameters()))


@pytest.mark.parametrize("options, message", [
    ({"d_conv": 0}, r"d_conv=0: must be an integer \(> 0\)"),
    ({"bias": 1}, "bias=1: must be True or False"),
    ({"window": 4}, r"unknown option\(s\) \['window'\]"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        MIXERS.build("short_conv", 16, 2, options=options)
