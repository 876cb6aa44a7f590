"""Lightning attention against its recurrence written out here in float64; its decay rates against MiniMax's."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_mixer_matches
from seqmix.mixers import MIXERS
from seqmix.mixers.lightning import minimax_slopes


def _per_token(m, x):
    """S_t = e^{−s_h} S_{t−1} + k_t v_tᵀ, o_t = S_tᵀ q_t; y = W_o (RMSNorm(o) ⊙ σ(W_g x))."""
    B, T, _ = x.shape
    H, D = m.n_heads, m.head_dim
    q, k, v = F.silu(x @ m.qkv.weight.T).view(B, T, H, 3 * D).split(D, -1)
    S = torch.zeros(B, H, D, D, dtype=x.dtype)
    outs = []
    for t in range(T):
        S = torch.exp(-m.slopes)[:, None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, None, :] @ S)[:, :, 0])
    o = torch.stack(outs, 1).reshape(B, T, H * D)
    o = o / (o.square().mean(-1, keepdim=True) + m.norm.eps).sqrt() * m.norm.weight
    return (o * torch.sigmoid(x @ m.gate.weight.T)) @ m.out.weight.T


@pytest.mark.parametrize("options, layer", [({"chunk_size": 4}, 0), ({"head_dim": 5, "chunk_size": 8}, 2)])
def test_lightning_follows_its_recurrence(options, layer):
    torch.manual_seed(0)
    m = MIXERS.build("lightning", 16, 2, options=options, layer_idx=layer, n_layers=3).double()
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    assert_mixer_matches(m, x, _per_token(m, x))


def test_decay_rates_are_minimaxs():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "MiniMaxConfig"):
        pytest.skip("this transformers has no MiniMax")
    config = transformers.MiniMaxConfig(hidden_size=32, num_attention_heads=8, num_hidden_layers=5, intermediate_size=8,
                                        num_local_experts=2, layer_types=["linear_attention"] * 5, vocab_size=16)
    hf = transformers.MiniMaxForCausalLM(config)
    for i, layer in enumerate(hf.model.layers):
        assert torch.allclose(minimax_slopes(8, i, 5), layer.self_attn.slope_rate.flatten(), rtol=1e-6, atol=0)


def test_lightning_gradients_are_exact():
    torch.manual_seed(0)
    m = MIXERS.build("lightning", 8, 2, options={"chunk_size": 4}).double()
    x = torch.randn(1, 7, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))
