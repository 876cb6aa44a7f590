"""RoPE against the rotation written out pair by pair, in both pairings, any memory layout, one or two tensors."""
import pytest
import torch

from helpers import assert_close
from seqmix.layers import apply_rope

F64 = torch.float64


def rotate_by_hand(x, positions, theta, interleaved):
    """Pair (a, b) at position p and frequency i: (a cos φ − b sin φ, a sin φ + b cos φ), φ = p·θ^(−2i/D)."""
    d = x.shape[-1]
    out = x.clone()
    for t in range(x.shape[-2]):
        for i in range(d // 2):
            pos = positions[..., t]
            phi = pos.to(F64) * theta ** (-2 * i / d)
            if phi.dim():  # [B] -> broadcast over heads
                phi = phi[:, None]
            a_idx, b_idx = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
            a, b = x[..., t, a_idx], x[..., t, b_idx]
            out[..., t, a_idx] = a * torch.cos(phi) - b * torch.sin(phi)
            out[..., t, b_idx] = a * torch.sin(phi) + b * torch.cos(phi)
    return out


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
@pytest.mark.parametrize("per_sequence", [False, True], ids=["positions[T]", "positions[B,T]"])
def test_rope_matches_the_rotation_written_out(interleaved, per_sequence):
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 5, 8
    x = torch.randn(B, T, H * D, dtype=F64).view(B, T, H, D).transpose(1, 2)  # heads split from [B, T, H·D]
    positions = torch.randint(0, 1000, (B, T) if per_sequence else (T,))
    expected = rotate_by_hand(x, positions, 10000.0, interleaved)
    assert_close(apply_rope(x, positions, 10000.0, interleaved=interleaved), expected, atol=1e-12)
    assert_close(apply_rope(x.contiguous(), positions, 10000.0, interleaved=interleaved), expected, atol=1e-12)
    q, k = apply_rope((x, 2 * x), positions, 10000.0, interleaved=interleaved)
    assert_close(q, expected, atol=1e-12)
    assert_close(k, 2 * expected, atol=1e-12)


def test_rope_keeps_norms_and_half_precision_dtype():
    x = torch.randn(1, 2, 7, 16, dtype=torch.bfloat16)
    y = apply_rope(x, torch.arange(7), interleaved=True)
    assert y.dtype == torch.bfloat16
    assert_close(y.float().norm(dim=-1), x.float().norm(dim=-1), atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="even head dimension"):
        apply_rope(torch.randn(1, 1, 3, 5), torch.arange(3))
