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
