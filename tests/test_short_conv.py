"""ShortConv against the causal convolution written out, in each of its three evaluation paths."""
import pytest
import torch

from helpers import assert_close
from seqmix.layers import ShortConv

F64 = torch.float64


def conv_by_hand(conv, x, tail):
    """y_t = Σ_j w_j ⊙ x_{t−K+1+j} + bias over [tail, x] (the K−1 inputs before x, zeros when tail is None)."""
    K = conv.kernel_size
    w = conv.conv.weight[:, 0]  # [C, K]
    full = torch.cat([x.new_zeros(x.shape[0], K - 1, x.shape[2]) if tail is None else tail, x], dim=1)
    y = torch.stack([(full[:, t:t + K] * w.t()).sum(1) for t in range(x.shape[1])], dim=1)
    return y if conv.conv.bias is None else y + conv.conv.bias


@pytest.mark.parametrize("T", [1, 2, 4, 9])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_tail", [False, True])
def test_short_conv_paths_equal_the_convolution_written_out(T, bias, with_tail):
    torch.manual_seed(T)
    conv = ShortConv(6, kernel_size=4, bias=bias).double()
    x = torch.randn(2, T, 6, dtype=F64)
    tail = torch.randn(2, 3, 6, dtype=F64) if with_tail else None
    expected = conv_by_hand(conv, x, tail)
    y_taps, tail_taps = conv(x, tail)  # autograd recording: the multiply-add taps
    with torch.no_grad():
        y_conv2d, tail_conv2d = conv(x, tail)  # nothing recorded: one conv2d (padded from T = K; T = 1: the window sum)
    for y in (y_taps, y_conv2d):
        assert_close(y, expected, atol=1e-12)
    full = torch.cat([torch.zeros(2, 3, 6, dtype=F64) if tail is None else tail, x], dim=1)
    for new_tail in (tail_taps, tail_conv2d):
        assert_close(new_tail, full[:, -3:], atol=0)
