"""Dense feed-forward layers against their formulas written out."""
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
