"""Converters of transformers' Mamba variants and Mamba hybrids (Falcon-Mamba, Jamba, ...): the transformers
model is the oracle, through ``check_conversion`` (one shot, token by token against its own cached decode,
and seqmix's decode exact in float64)."""
import pytest
import torch

from seqmix.interop import from_transformers
from test_convert_hybrids import check_conversion

transformers = pytest.importorskip("transformers")


def _build(name: str, **fields):
    if not hasattr(transformers, name + "Config"):
        pytest.skip(f"this transformers has no {name}")
    torch.manual_seed(0)
    return getattr(transformers, name + "ForCausalLM")(getattr(transformers, name + "Config")(**fields))


def _falcon_mamba(**overrides):
    fields = dict(vocab_size=83, hidden_size=32, state_size=6, num_hidden_layers=3, expand=2, conv_kernel=4,
                  mixer_rms_eps=1e-6, tie_word_embeddings=True)
    return _build("FalconMamba", **{**fields, **overrides})


FALCON_MAMBA = {
    "tied": {},
    "untied-biases-rank-3-expand-3": dict(
        tie_word_embeddings=False, use_bias=True, use_conv_bias=False, time_step_rank=3, expand=3, conv_kernel=3,
        mixer_rms_eps=1e-3, layer_norm_epsilon=1e-4),
}


@pytest.mark.parametrize("overrides", list(FALCON_MAMBA.values()), ids=list(FALCON_MAMBA))
def test_falcon_mamba(overrides):
    model = check_conversion(_falcon_mamba(**overrides))
    mixer = model.blocks[0].mixer
    assert (mixer.dt_bc_norm, mixer.dt_bc_norm_eps) == ("rms", overrides.get("mixer_rms_eps", 1e-6))
    assert model.config.tie_embeddings == overrides.get("tie_word_embeddings", True)


def test_falcon_mamba_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        from_transformers(_falcon_mamba(hidden_act="gelu"))


def _jamba(**overrides):
    fields = dict(vocab_size=91, hidden_size=32, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                  expert_layer_offset=1, attn_layer_period=3, attn_layer_offset=1, mamba_d_state=5, mamba_d_conv=4,
                  mamba_expand=2, tie_word_embeddings=False)
    return _build("Jamba", **{**fields, **overrides})


JAMBA = {
    "grouped-heads-moe-every-other-layer": {},
    "tied-dense-attention-first-biases": dict(
        tie_word_embeddings=True, num_experts=1, num_key_value_heads=1, attn_layer_period=2, attn_layer_offset=0,
        num_hidden_layers=3, mamba_proj_bias=True, mamba_conv_bias=False, mamba_dt_rank=3, mamba_d_conv=2,
        rms_norm_eps=1e-5),
    "moe-everywhere-top-1": dict(num_experts=3, num_experts_per_tok=1, expert_layer_period=1, expert_layer_offset=0,
                                 num_key_value_heads=4, mamba_expand=1),
}


@pytest.mark.parametrize("overrides", list(JAMBA.values()), ids=list(JAMBA))
def test_jamba(overrides):
    hf = _jamba(**overrides)
    model = check_conversion(hf)
    c = hf.config
    kinds = [(b.mixer.registered_name, type(b.ffn).__name__) for b in model.blocks]
    assert kinds == [("attention" if kind == "attention" else "mamba", "MoE" if e > 1 else "SwiGLU")
                     for kind, e in zip(c.layers_block_type, c.layers_num_experts)]
    assert "attention" in c.layers_block_type and "mamba" in c.layers_block_type
    assert all(b.mixer.rope_dims == 0 for b in model.blocks if b.mixer.registered_name == "attention")
    assert model.config.tie_embeddings == c.tie_word_embeddings


def test_jamba_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        from_transformers(_jamba(hidden_act="gelu"))

