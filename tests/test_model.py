import pytest
import torch

from helpers import assert_any_split
from seqmix import ModelConfig, SeqMixLM, available_mixers


@pytest.mark.parametrize("mixer", available_mixers())
def test_any_split_invariant_every_mixer(mixer):
    assert_any_split(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2))


@pytest.mark.parametrize("mixer, options", [
    ("gated_deltanet", {"n_k_heads": 1, "head_dim_k": 8, "head_dim_v": 12, "chunk_size": 4}),
    ("attention", {"n_kv_heads": 1, "qk_norm": "head", "rope_fraction": 0.5, "output_gate": True, "bias": True})])
def test_any_split_invariant_with_production_settings(mixer, options):
    assert_any_split(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2, mixer_options=options))


@pytest.mark.parametrize("mixer", ["attention", "gla", "mamba", "rwkv7"])
def test_any_split_with_a_short_conv_before_the_mixer(mixer):
    config = ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2, ffn="none", mixer_conv=3,
                         tie_embeddings=False)
    assert_any_split(config)
    model = SeqMixLM(config)
    assert model.init_state(2)[0]["conv"].shape == (2, 2, 32)  # the last K - 1 = 2 inputs of the conv
    assert sum(p.numel() for p in model.blocks[0].conv.parameters()) == 32 * 3 + 32


def test_public_api_and_shapes():
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=4))
    tokens = torch.randint(0, 256, (3, 11))
    assert model(tokens).shape == (3, 11, 256)
    state = model.init_state(batch_size=3)
    logits, state = model(tokens[:, :1], state=state)
    assert logits.shape == (3, 1, 256) and len(state) == 2


def test_tied_and_untied_embeddings():
    tied = SeqMixLM(ModelConfig(d_model=32, n_layers=1, n_heads=2))
    untied = SeqMixLM(ModelConfig(d_model=32, n_layers=1, n_heads=2, tie_embeddings=False))
    assert tied.head.weight is tied.embed.weight
    assert untied.num_parameters() == tied.num_parameters() + 256 * 32


def test_per_layer_pattern_list_with_options():
    cfg = ModelConfig(pattern=["gla", {"mixer": "attention", "options": {"window": 4}}, "linear_attention"],
                      n_layers=3, d_model=32, n_heads=2, mixer_options={"gla": {"decay": "scalar"}})
    specs = cfg.layer_specs()
    assert [s.mixer for s in specs] == ["gla", "attention", "linear_attention"]
    assert specs[0].options == {"decay": "scalar"} and specs[1].options == {"window": 4}
    assert_any_split(cfg)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mixer="transformerz"), "unknown; available"),
    (dict(d_model=30, n_heads=4), "divisible by n_heads"),
    (dict(n_layers=0), "n_layers=0"),
    (dict(ffn="mlp9"), "ffn='mlp9'"),
    (dict(mixer="gla", mixer_options={"decay_mode": "x"}), "unknown option(s) ['decay_mode']"),
    (dict(mixer="gla", mixer_options={"decay": "sometimes"}), "decay='sometimes'"),
    (dict(pattern="no-such-hybrid"), "unknown preset"),
    (dict(pattern=["gla"], n_layers=2), "has 1 entries"),
    (dict(pattern=["gla", "gla"], n_layers=2, mixer_options={"mamba": {}}), "key options by mixer name"),
    (dict(mixer="attention", mixer_options={"window": 0}), "window=0"),
    (dict(mixer_conv=-1), "mixer_conv=-1"),
    (dict(embed_scale=0.0), "ModelConfig.embed_scale=0.0: must be a positive number or None"),
    (dict(logit_soft_cap=True), "ModelConfig.logit_soft_cap=True: must be a positive number or None"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as err:
        SeqMixLM(ModelConfig(**kwargs))
    assert message in str(err.value)


def test_token_ids_out_of_range_are_refused():
    model = SeqMixLM(ModelConfig(d_model=32, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="vocab_size=256"):
        model(torch.tensor([[1, 256]]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="state has 3 layers"):
        model(torch.tensor([[1]]), state=model.init_state(1) * 3)


def test_shared_norm_blocks_with_scales():
    """norm_position="shared" with scales: h = α₁ n₁(x) + β₁ mixer(n₁(x)), then α₂ n₂(h) + β₂ ffn(n₂(h)) (MiniMax)."""
    entry = {"mixer": "lightning", "norm_position": "shared", "mixer_scales": [1.5, 0.5], "ffn_scales": [2.0, 0.25]}
    config = ModelConfig(d_model=32, n_layers=2, n_heads=2, pattern=["gla", entry])
    assert_any_split(config)
    torch.manual_seed(0)
    block = SeqMixLM(config).double().eval().blocks[1]
    with torch.no_grad():
        x = torch.randn(2, 9, 32, dtype=torch.float64)
        n = block.norm1(x)
        h = 1.5 * n + 0.5 * block.mixer(n)[0]
        n = block.norm2(h)
        assert torch.allclose(block(x)[0], 2.0 * n + 0.25 * block.ffn(n)[0], atol=1e-12, rtol=0)


def test_post_norm_blocks_normalise_the_sublayer_outputs():
    """norm_position="post": x + norm(mixer(x)), then x + norm(ffn(x)) (OLMo-2), per layer in a pattern."""
    config = ModelConfig(d_model=32, n_layers=2, n_heads=2, pattern=[
        "gla", {"mixer": "attention", "norm_position": "post"}])
    assert_any_split(config)
    torch.manual_seed(0)
    model = SeqMixLM(config).double().eval()
    block = model.blocks[1]
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        x = torch.randn(2, 9, 32, dtype=torch.float64)
        h = x + block.norm1(block.mixer(x)[0])
        expected = h + block.norm2(block.ffn(h)[0])
        assert torch.allclose(block(x)[0], expected, atol=1e-12, rtol=0)
    assert not model.blocks[0].post_norm and block.post_norm


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm_position="middle"), r"ModelConfig.norm_position='middle': choose one of \['pre', 'post', 'shared'\]"),
    (dict(pattern=["gla", {"mixer": "gla", "ffn_scales": [1]}], n_layers=2), r"pattern\[1\].ffn_scales=\[1\]: must be a pair"),
    (dict(pattern=["gla", {"mixer": "gla", "norm_position": "x"}], n_layers=2), r"pattern\[1\].norm_position='x'"),
    (dict(mixer="gla", mixer_options={"n_heads": 0}), r"mixer_options\['gla'\].n_heads=0: must be a positive integer"),
])
def test_layer_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"d_model": 32, "n_heads": 2, **kwargs})


def test_embedding_scale_and_logit_soft_cap():
    """x = embed_scale · embed(tokens) into the first block; logits = cap · tanh(head(norm x) / cap)."""
    config = ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=2, embed_scale=5.5, logit_soft_cap=0.1)
    model = assert_any_split(config)
    tokens = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        x = model.embed(tokens) * 5.5
        for block in model.blocks:
            x = block(x)[0]
        raw = model.head(model.norm(x))
        assert torch.allclose(model(tokens), 0.1 * torch.tanh(raw / 0.1), atol=1e-12, rtol=0)
        assert raw.abs().max() > 0.1 > model(tokens).abs().max()  # the cap binds


def test_swiglu_gelu_tanh_with_biases_is_gemmas_gated_mlp():
    """activation="gelu_tanh", bias=True: y = W_d (gelu_tanh(W_g x + b_g) ⊙ (W_u x + b_u)) + b_d."""
    from seqmix.ffn import FFNS
    torch.manual_seed(0)
    ffn = FFNS.build("swiglu", 8, options={"hidden": 6, "activation": "gelu_tanh", "bias": True}).double()
    with torch.no_grad():
        for p in ffn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    gate, up = (x @ ffn.gate_up.weight.t() + ffn.gate_up.bias).split(6, -1)
    expected = (torch.nn.functional.gelu(gate, approximate="tanh") * up) @ ffn.down.weight.t() + ffn.down.bias
    assert torch.allclose(ffn(x)[0], expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="activation='relu'"):
        FFNS.build("swiglu", 8, options={"activation": "relu"})
