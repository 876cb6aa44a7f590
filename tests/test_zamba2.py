"""Zamba-2's hybrid layer as a mixer: the state path and what it needs from the model (its conversion from
transformers is tested in test_convert_mamba_hybrids)."""
import pytest
import torch

from helpers import assert_any_split
from seqmix import ModelConfig, SeqMixLM
from seqmix.mixers import MIXERS

OPTIONS = {"attention": {"n_heads": 4, "n_kv_heads": 2, "rope_theta": 500.0},
           "mamba2": {"d_state": 4, "headdim": 8, "ngroups": 2, "chunk_size": 4}, "hidden": 24, "activation": "silu"}


def test_zamba2_hybrid_any_split_among_mamba2_layers():
    model = assert_any_split(ModelConfig(d_model=16, n_layers=3, n_heads=2, ffn="none", pattern=[
        {"mixer": "mamba2", "options": {"headdim": 8}}, {"mixer": "zamba2_hybrid", "options": OPTIONS},
        {"mixer": "zamba2_hybrid", "options": OPTIONS}]))
    hybrid = model.blocks[1].mixer
    assert hybrid.attention.qkv.in_features == 32 and hybrid.attention.out.out_features == 16  # [x, e] in, x out
    assert isinstance(model.blocks[1].norm1, torch.nn.Identity)  # it normalises its own inputs


def test_zamba2_hybrid_needs_the_embeddings():
    mixer = MIXERS.build("zamba2_hybrid", 16, 2, options=OPTIONS)
    with pytest.raises(ValueError, match="token embeddings"):
        mixer(torch.randn(1, 3, 16))
    SeqMixLM(ModelConfig(mixer="zamba2_hybrid", d_model=16, n_layers=1, n_heads=2, mixer_options=OPTIONS))(
        torch.zeros(1, 3, dtype=torch.long))  # inside a model it has them


def test_zamba2_hybrid_gradients_are_exact():
    from seqmix.mixers.base import EMBEDDINGS

    torch.manual_seed(0)
    m = MIXERS.build("zamba2_hybrid", 16, 2, options=OPTIONS).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64, requires_grad=True)
    e = torch.randn(1, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, e: m(x, None, {EMBEDDINGS: e})[0], (x, e))
