"""Dense feed-forward layers against their formulas written out."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from seqmix.ffn import FFNS


def test_swiglu_with_biases():
    torch.manual_seed(0)
    m = FFNS.build("swiglu", 6, options={"hidden": 5, "bias": True}).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    (wg, wu), (bg, bu) = m.gate_up.weight.split(5), m.gate_up.bias.split(5)
    expected = (F.silu(x @ wg.T + bg) * (x @ wu.T + bu)) @ m.down.weight.T + m.down.bias
    assert_close(m(x)[0], expected)


@pytest.mark.parametrize("activation, act", [("relu2", lambda x: F.relu(x) ** 2), ("relu", F.relu),
                                             ("gelu", lambda x: x * 0.5 * (1 + torch.erf(x / 2 ** 0.5))),
                                             ("silu", lambda x: x * torch.sigmoid(x))])
@pytest.mark.parametrize("bias", [False, True])
def test_mlp(activation, act, bias):
    torch.manual_seed(0)
    m = FFNS.build("mlp", 6, options={"hidden": 5, "activation": activation, "bias": bias}).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    up = x @ m.up.weight.T + (m.up.bias if bias else 0)
    expected = act(up) @ m.down.weight.T + (m.down.bias if bias else 0)
    assert_close(m(x)[0], expected)
    assert m.up.weight.shape == (5, 6)


def test_mlp_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="activation='tanh'"):
        FFNS.build("mlp", 6, options={"activation": "tanh"})


def test_geglu():
    torch.manual_seed(0)
    m = FFNS.build("swiglu", 6, options={"hidden": 5, "activation": "gelu"}).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    wg, wu = m.gate_up.weight.split(5)
    gelu = (x @ wg.T) * 0.5 * (1 + torch.erf((x @ wg.T) / 2 ** 0.5))
    assert_close(m(x)[0], (gelu * (x @ wu.T)) @ m.down.weight.T)
