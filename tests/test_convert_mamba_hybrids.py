"""Converters of transformers' Mamba variants and Mamba hybrids (Falcon-Mamba, Jamba, ...): the transformers
model is the oracle, through ``check_conversion`` (one shot, token by token against its own cached decode,
and seqmix's decode exact in float64)."""

import pytest
import torch

from helpers import assert_rel_close, randomise
from seqmix.interop import from_transformers, load_pretrained
from test_convert_hybrids import _hf_cached_decode, check_conversion, random_tokens, transformers_forward

transformers = pytest.importorskip("transformers")


def _build(name: str, **fields):
    if not hasattr(transformers, name + "Config"):
        pytest.skip(f"this transformers has no {name}")
    if int(transformers.__version__.split(".")[0]) < 5:  # 4.x: experts as modules, Jamba's CUDA-only Mamba path
        pytest.skip("the hybrid converters follow transformers 5's layouts")
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


def _bamba(**overrides):
    fields = dict(vocab_size=87, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, attn_layer_indices=[2], mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2,
                  mamba_d_state=6, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    return _build("Bamba", **{**fields, **overrides})


BAMBA = {
    "grouped-heads-partial-rope": {},
    "tied-biases-attention-first-one-group": dict(
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, mamba_proj_bias=True, mamba_conv_bias=False,
        attn_layer_indices=[0, 2], num_hidden_layers=3, num_key_value_heads=4, mamba_n_heads=4, mamba_d_head=16,
        mamba_n_groups=1, mamba_d_conv=3, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
}


@pytest.mark.parametrize("overrides", list(BAMBA.values()), ids=list(BAMBA))
def test_bamba(overrides):
    hf = _bamba(**overrides)
    model = check_conversion(hf)
    c = hf.config
    assert [b.mixer.registered_name for b in model.blocks] == [
        "attention" if kind == "full_attention" else "mamba2" for kind in c.layers_block_type]
    attention = next(b.mixer for b in model.blocks if b.mixer.registered_name == "attention")
    assert attention.rope_dims == attention.head_dim // 2  # Bamba rotates half of each head
    assert model.config.tie_embeddings == c.tie_word_embeddings


def check_against_forward(hf, seed: int = 1, length: int = 23, prefill: int = 9):
    """``check_conversion`` for models whose cached decode in transformers is not its forward: seqmix's token-by-
    token decode held to transformers' forward instead (weights at gain 1). Returns transformers' own
    decode-vs-forward disagreement."""
    check_conversion(hf, seed, length, prefill, gain=1.0, hf_decode=transformers_forward)
    tokens = random_tokens(hf, seed, length)
    with torch.no_grad():
        return assert_rel_close(_hf_cached_decode(hf, tokens, prefill), transformers_forward(hf, tokens, prefill),
                                rtol=float("inf"))


def test_bamba_time_step_limit():
    """transformers clamps Δ to ``time_step_limit`` in its chunked scan but not in its one-token step, so its
    cached decode is not its forward when the limit binds; seqmix clamps in both, like the forward."""
    theirs = check_against_forward(_bamba(time_step_limit=(0.05, 0.5)))
    assert theirs > 1e-2, "transformers' decode now clamps Δ: use check_conversion here"


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "rope_type"),
])
def test_bamba_refuses_what_it_cannot_represent(overrides, field):
    with pytest.raises(ValueError, match=field):
        from_transformers(_bamba(**overrides))


def _granite(**overrides):
    fields = dict(vocab_size=89, hidden_size=32, intermediate_size=12, shared_intermediate_size=20, num_hidden_layers=4,
                  layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                  mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=6, mamba_chunk_size=8,
                  embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0625,
                  logits_scaling=8.0, position_embedding_type="rope",
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    return _build("GraniteMoeHybrid", **{**fields, **overrides})


GRANITE = {
    "moe-shared-multipliers-rope": {},
    "tied-nope-biases-multipliers": dict(
        tie_word_embeddings=True, position_embedding_type=None, attention_bias=True, mamba_proj_bias=True,
        mamba_conv_bias=False, num_key_value_heads=1, num_local_experts=3, num_experts_per_tok=1,
        layer_types=["full_attention", "linear_attention", "full_attention"], num_hidden_layers=3,
        embedding_multiplier=3.0, residual_multiplier=1.7, attention_multiplier=0.3, logits_scaling=0.5),
    "dense-shared-mlp-only": dict(num_local_experts=0, mamba_n_groups=1, time_step_limit=(0.0, float("inf"))),
    "moe-without-shared-mlp": dict(shared_intermediate_size=0),
}


@pytest.mark.parametrize("overrides", list(GRANITE.values()), ids=list(GRANITE))
def test_granite_moe_hybrid(overrides):
    hf = _granite(**overrides)
    model = check_conversion(hf)
    c = hf.config
    assert [b.mixer.registered_name for b in model.blocks] == [
        "attention" if kind == "full_attention" else "mamba2" for kind in c.layer_types]
    attention = next(b.mixer for b in model.blocks if b.mixer.registered_name == "attention")
    assert attention.rope_dims == (attention.head_dim if c.position_embedding_type == "rope" else 0)
    ffn = model.blocks[0].ffn
    assert type(ffn).__name__ == ("MoE" if c.num_local_experts else "SwiGLU")
    if c.num_local_experts:
        assert (ffn.shared is not None) == (c.shared_intermediate_size > 0)


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "rope_type"),
    (dict(num_local_experts=0, shared_intermediate_size=0), "shared_intermediate_size=0"),
    (dict(layer_types=["linear_attention", "sliding_attention", "linear_attention", "linear_attention"]),
     r"layer_types\[1\]=.sliding_attention"),
])
def test_granite_moe_hybrid_refuses_what_it_cannot_represent(overrides, field):
    with pytest.raises(ValueError, match=field):
        from_transformers(_granite(**overrides))


def _nemotron_h(**overrides):
    fields = dict(vocab_size=97, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                  layers_block_type=["linear_attention", "moe", "full_attention", "mlp", "linear_attention",
                                     "linear_attention", "moe"],
                  mamba_num_heads=4, mamba_head_dim=10, ssm_state_size=6, n_groups=2, conv_kernel=4, chunk_size=8,
                  intermediate_size=40, n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=12,
                  moe_shared_expert_intermediate_size=16, routed_scaling_factor=2.5, tie_word_embeddings=False)
    hf = _build("NemotronH", **{**fields, **overrides})
    for name, buffer in hf.named_buffers():  # the routers' selection biases are buffers, which randomise leaves
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(0.3 * torch.randn(buffer.shape, generator=torch.Generator().manual_seed(7)))
    return hf


NEMOTRON_H = {
    "mamba-moe-attention-mlp": {},
    "tied-relu-mlp-biases-attention-first-no-renormalisation": dict(
        layers_block_type=["full_attention", "mlp", "linear_attention", "linear_attention", "mlp", "full_attention"],
        tie_word_embeddings=True, mlp_hidden_act="relu", mlp_bias=True, use_bias=True, use_conv_bias=False,
        num_key_value_heads=1, n_groups=1, mamba_head_dim=16, layer_norm_epsilon=1e-6),
    # (with an attention layer: transformers' cached decode of a model without one fails in its mask code)
    "moe-without-renormalisation-width-not-a-multiple": dict(
        layers_block_type=["linear_attention", "moe", "full_attention", "moe", "linear_attention"],
        norm_topk_prob=False,
        num_experts_per_tok=3, routed_scaling_factor=1.0, mamba_num_heads=3, mamba_head_dim=7, n_groups=3),
}


@pytest.mark.parametrize("overrides", list(NEMOTRON_H.values()), ids=list(NEMOTRON_H))
def test_nemotron_h(overrides):
    hf = _nemotron_h(**overrides)
    model = check_conversion(hf)
    kinds = hf.config.layers_block_type
    names = {"linear_attention": "mamba2", "full_attention": "attention", "mlp": "MLP", "moe": "MoE"}
    blocks = [[names[kinds[i]], None] for i in range(len(kinds)) if kinds[i] in ("linear_attention", "full_attention")]
    for i, kind in enumerate(kinds):  # an FFN layer joins the block of the mixer layer before it
        if kind in ("mlp", "moe"):
            blocks[sum(k in ("linear_attention", "full_attention") for k in kinds[:i]) - 1][1] = names[kind]
    assert [[b.mixer.registered_name, b.ffn and type(b.ffn).__name__] for b in model.blocks] == blocks
    assert all(b.mixer.rope_dims == 0 for b in model.blocks if b.mixer.registered_name == "attention")


@pytest.mark.parametrize("overrides, field", [
    (dict(layers_block_type=["linear_attention", "mlp", "moe"]), r"layers_block_type\[2\]='moe'"),
    (dict(layers_block_type=["mlp", "linear_attention"]), r"layers_block_type\[0\]='mlp'"),
    (dict(mamba_hidden_act="gelu"), "mamba_hidden_act='gelu'"),
    (dict(mlp_hidden_act="tanh"), "mlp_hidden_act='tanh'"),
    (dict(mlp_hidden_act="silu"), "mlp_hidden_act='silu'"),  # fine for MLP layers, not for relu²-only MoE
    (dict(moe_latent_size=8), "moe_latent_size=8"),
    (dict(n_group=2, topk_group=1), "topk_group=1"),
    (dict(mlp_bias=True), "mlp_bias=True"),
])
def test_nemotron_h_refuses_what_it_cannot_represent(overrides, field):
    with pytest.raises(ValueError, match=field):
        from_transformers(_nemotron_h(**overrides))


def _falcon_h1(**overrides):
    fields = dict(vocab_size=83, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, mamba_d_ssm=48, mamba_n_heads=6, mamba_d_head=8, mamba_n_groups=2,
                  mamba_d_state=6, mamba_chunk_size=8, mamba_rms_norm=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                  embedding_multiplier=5.0, lm_head_multiplier=0.25, mlp_multipliers=[0.7, 1.6], key_multiplier=1.9,
                  attention_in_multiplier=0.8, attention_out_multiplier=1.3,
                  ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 2.0], ssm_in_multiplier=1.4, ssm_out_multiplier=0.6)
    return _build("FalconH1", **{**fields, **overrides})


FALCON_H1 = {
    "no-mamba-norm-multipliers": {},
    "tied-norm-before-gate-biases": dict(
        tie_word_embeddings=True, mamba_rms_norm=True, mamba_norm_before_gate=True, attention_bias=True,
        mlp_bias=True, mamba_proj_bias=True, projectors_bias=True, mamba_conv_bias=False, num_key_value_heads=1,
        mamba_n_groups=1, mamba_d_ssm=None, mamba_expand=2, mamba_n_heads=4, mamba_d_head=16),
    "gate-then-norm": dict(mamba_rms_norm=True, mamba_norm_before_gate=False, num_key_value_heads=4),
}


@pytest.mark.parametrize("overrides", list(FALCON_H1.values()), ids=list(FALCON_H1))
def test_falcon_h1(overrides):
    hf = _falcon_h1(**overrides)
    model = check_conversion(hf)
    c = hf.config
    mamba, attention = model.blocks[0].mixer.mixers
    expected = "gate_only" if not c.mamba_rms_norm else "norm_then_gate" if c.mamba_norm_before_gate else \
        "gate_then_norm"
    assert (mamba.registered_name, attention.registered_name, mamba.gate_norm) == ("mamba2", "attention", expected)
    assert mamba.d_inner == (c.mamba_d_ssm or 64) and attention.rope_dims == attention.head_dim


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(projectors_bias=True), "projectors_bias=True"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "rope_type"),
])
def test_falcon_h1_refuses_what_it_cannot_represent(overrides, field):
    with pytest.raises(ValueError, match=field):
        from_transformers(_falcon_h1(**overrides))


def _zamba2(**overrides):
    fields = dict(vocab_size=79, hidden_size=16, num_hidden_layers=5,
                  layers_block_type=["linear_attention", "hybrid", "linear_attention", "hybrid", "hybrid"],
                  num_attention_heads=4, num_key_value_heads=4, n_mamba_heads=4, mamba_d_state=6, mamba_ngroups=2,
                  chunk_size=8, intermediate_size=24, num_mem_blocks=2, use_shared_attention_adapter=True,
                  adapter_rank=3, use_mem_rope=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return _build("Zamba2", **{**fields, **overrides})


ZAMBA2 = {  # (transformers' q/k/v adapters are as wide as the queries: they need as many key/value heads)
    "two-shared-blocks-attention-adapters-rope-gelu": {},
    "one-shared-block-mlp-adapters-only-grouped-heads-nope-silu-untied": dict(
        num_mem_blocks=1, use_shared_attention_adapter=False, use_mem_rope=False, hidden_act="silu",
        num_key_value_heads=2, mamba_ngroups=1, tie_word_embeddings=False,
        layers_block_type=["hybrid", "linear_attention", "hybrid", "linear_attention"], num_hidden_layers=4),
}


@pytest.mark.parametrize("overrides", list(ZAMBA2.values()), ids=list(ZAMBA2))
def test_zamba2(overrides):
    hf = _zamba2(**overrides)
    model = check_conversion(hf)
    assert [b.mixer.registered_name for b in model.blocks] == [
        "zamba2_hybrid" if kind == "hybrid" else "mamba2" for kind in hf.config.layers_block_type]


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_act="relu"), "hidden_act='relu'"),
    (dict(add_bias_linear=True), "add_bias_linear=True"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "rope_type"),
])
def test_zamba2_refuses_what_it_cannot_represent(overrides, field):
    with pytest.raises(ValueError, match=field):
        from_transformers(_zamba2(**overrides))


@pytest.mark.parametrize("build", [_falcon_mamba, _jamba, _bamba, _granite, _nemotron_h, _falcon_h1, _zamba2],
                         ids=lambda b: b.__name__.strip("_"))
def test_load_pretrained_takes_every_model_type(build, tmp_path):
    hf = build()
    randomise(hf, 2)
    hf.save_pretrained(tmp_path)
    tokens = torch.randint(0, hf.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_rel_close(load_pretrained(tmp_path)(tokens), hf.eval()(tokens).logits, what="loaded from the directory")
