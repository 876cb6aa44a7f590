"""Conversions into seqmix: transformers' Mamba / Mamba-2 / RWKV-4 and the official TTT model, plus the model
options they need (no FFN, LayerNorm, embedding norm, biases, fractional expand, Δ clamp, RWKV-4 width,
TTT's official two-norm block).

Reference models are built locally at random (nothing is downloaded); the official TTT model cannot be
run here, so its logits come from fixtures made once with the official code (tests/fixtures/ttt_reference).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import assert_any_split, assert_rel_close, randomise
from seqmix import ModelConfig, SeqMixLM
from seqmix.interop import from_transformers, from_ttt_reference
from seqmix.model.generate import sample

FIXTURES = Path(__file__).parent / "fixtures" / "ttt_reference"
TTT_CASES = ("linear_transformer", "linear_mamba", "mlp_transformer", "mlp_mamba")


def recurrent_logits(model, tokens, pieces):
    """Logits of `tokens` fed through the state in pieces of the given lengths (the rest one by one)."""
    state, outs, pos = model.init_state(tokens.shape[0]), [], 0
    for n in list(pieces) + [1] * tokens.shape[1]:
        if pos >= tokens.shape[1]:
            break
        logits, state = model(tokens[:, pos:pos + n], state=state)
        outs.append(logits)
        pos += n
    return torch.cat(outs, dim=1)


def greedy_by_recomputing(model, prompt, n):
    """Greedy continuation that re-runs the whole sequence for every token (no state): the decode oracle.
    ``model``: tokens [B, T] -> logits [B, T, V]."""
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1]:]


# --- model options added for faithful conversions -------------------------------------------------------

def test_no_ffn_layernorm_embedding_norm_and_final_eps():
    cfg = ModelConfig(mixer="mamba", d_model=32, n_layers=2, n_heads=2, ffn="none", norm="layernorm",
                      embed_norm=True, norm_eps=1e-4, final_norm_eps=1e-2)
    model = assert_any_split(cfg)
    block = model.blocks[0]
    assert block.ffn is None and block.norm2 is None and isinstance(block.norm1, torch.nn.LayerNorm)
    assert block.norm1.eps == 1e-4 and model.norm.eps == 1e-2 and isinstance(model.embed_norm, torch.nn.LayerNorm)
    assert model.init_state(1)[0]["ffn"] == {}
    # the embedding norm is applied: changing its bias changes the logits
    tokens = torch.randint(0, 256, (1, 5))
    before = model(tokens)
    with torch.no_grad():
        model.embed_norm.bias.add_(torch.randn(32, dtype=torch.float64))  # (a uniform shift would cancel)
    assert not torch.allclose(model(tokens), before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="batchnorm"), "norm='batchnorm'"),
    (dict(norm_eps=0.0), "norm_eps=0.0"),
    (dict(final_norm_eps=-1e-5), "final_norm_eps=-1e-05"),
    (dict(embed_norm="yes"), "embed_norm='yes'"),
    (dict(ffn="none", ffn_options={"hidden": 8}), "unknown option(s) ['hidden']"),
    (dict(mixer="mamba", mixer_options={"expand": 0.01}), "expand=0.01"),
    (dict(mixer="mamba", mixer_options={"bias": 1}), "bias=1"),
    (dict(mixer="mamba2", mixer_options={"dt_limit": (0.5, 0.1)}), "dt_limit=(0.5, 0.1)"),
    (dict(mixer="mamba2", mixer_options={"norm_eps": 0}), "norm_eps=0"),
    (dict(mixer="mamba2", mixer_options={"expand": 33 / 32}), "set the option headdim"),
    (dict(mixer="rwkv4", mixer_options={"d_attn": 0}), "d_attn=0"),
    (dict(mixer="ttt_linear", mixer_options={"residual_stream": True, "backbone": "transformer"}),
     "residual_stream=True"),
    (dict(mixer="ttt_mlp", mixer_options={"norm_eps": -1.0}), "norm_eps=-1.0"),
])
def test_new_options_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError) as err:
        SeqMixLM(ModelConfig(d_model=32, n_layers=1, n_heads=2, **kwargs))
    assert message in str(err.value)


def test_mamba_fractional_expand_and_bias_options():
    cfg = ModelConfig(mixer="mamba", d_model=20, n_layers=2, n_heads=2, ffn="none",
                      mixer_options=dict(expand=1.5, bias=True, conv_bias=False, d_state=5, dt_rank=3))
    mixer = assert_any_split(cfg).blocks[0].mixer
    assert mixer.d_inner == 30 and mixer.in_proj.bias is not None and mixer.out_proj.bias is not None
    assert mixer.conv.conv.bias is None


def test_mamba2_options_and_dt_limit_clamps(monkeypatch):
    cfg = ModelConfig(mixer="mamba2", d_model=24, n_layers=2, n_heads=2, ffn="none",
                      mixer_options=dict(headdim=8, ngroups=3, d_state=6, bias=True, conv_bias=False,
                                         norm_eps=1e-3, dt_limit=(0.2, 0.3)))
    model = assert_any_split(cfg)
    mixer = model.blocks[0].mixer
    assert mixer.heads == 6 and mixer.norm.eps == 1e-3 and mixer.conv.conv.bias is None
    import seqmix.mixers.mamba2 as m2

    seen = []
    chunked = m2.op.chunked
    monkeypatch.setattr(m2.op, "chunked", lambda x, dt, *a, **k: seen.append(dt) or chunked(x, dt, *a, **k))
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 9)))
    assert seen and all(float(dt.min()) >= 0.2 and float(dt.max()) <= 0.3 for dt in seen)


def test_rwkv4_attention_width():
    cfg = ModelConfig(mixer="rwkv4", d_model=24, n_layers=2, n_heads=1, ffn="rwkv_cmix", norm="layernorm",
                      embed_norm=True, mixer_options={"d_attn": 20})
    mixer = assert_any_split(cfg).blocks[0].mixer
    assert mixer.key.weight.shape == (20, 24) and mixer.output.weight.shape == (24, 20)
    assert mixer.init_state(1)["a"].shape == (1, 1, 20)


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp"])
def test_ttt_residual_stream_block(mixer):
    cfg = ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2,
                      mixer_options=dict(residual_stream=True, norm_eps=1e-5, mini_batch_size=4))
    model = assert_any_split(cfg)
    block = model.blocks[0]
    assert isinstance(block.norm1, torch.nn.Identity) and block.mixer.pre_conv_norm.eps == 1e-5
    # (that the composition is the official one is what the Mamba-backbone fixtures below check)


# --- the official TTT model (fixtures) ---------------------------------------------------------------------

def _ttt_fixture(name: str):
    from safetensors.torch import load_file

    record = json.loads((FIXTURES / f"{name}.json").read_text())
    return (load_file(str(FIXTURES / f"{name}.safetensors")), record["config"], torch.tensor(record["input_ids"]),
            torch.tensor(record["logits"]))


@pytest.mark.parametrize("name", TTT_CASES)
def test_ttt_reference_logits(name):
    state_dict, config, tokens, reference = _ttt_fixture(name)
    model = from_ttt_reference(state_dict, config)
    assert model.config.mixer == f"ttt_{config['ttt_layer_type']}"
    with torch.no_grad():
        assert_rel_close(model(tokens), reference, what=f"{name} one shot")
        # through the state, cut inside mini-batches (the official code cannot resume there)
        b = config["mini_batch_size"]
        assert_rel_close(recurrent_logits(model, tokens, [b + 1, 3]), reference, what=f"{name} recurrent")
        # decoding continues past the reference tokens exactly as recomputing the sequence would
        assert torch.equal(sample(model, tokens, 6, temperature=0), greedy_by_recomputing(model, tokens, 6))


def test_ttt_reference_refuses_mismatches():
    state_dict, config, _, _ = _ttt_fixture("linear_mamba")
    with pytest.raises(ValueError, match="pre_conv, share_qk and use_gate"):
        from_ttt_reference(state_dict, {**config, "use_gate": False})
    with pytest.raises(ValueError, match="has no 'model.layers.0.seq_modeling_block.W2'"):
        from_ttt_reference(state_dict, {**config, "ttt_layer_type": "mlp"})
    with pytest.raises(ValueError, match="no seqmix counterpart"):
        from_ttt_reference({**state_dict, "model.extra": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        from_ttt_reference(state_dict, {**config, "hidden_act": "gelu"})


# --- transformers' Mamba, Mamba-2, RWKV-4 -----------------------------------------------------------------

def _hf_models():
    try:
        import transformers
    except ImportError:  # skip these cases only: the rest of the file needs no transformers
        return [pytest.param(None, marks=pytest.mark.skip(reason="needs transformers (the seqmix[hf] extra)"))]
    mamba2_ok = int(transformers.__version__.split(".")[0]) >= 5
    skip_old = pytest.mark.skipif(not mamba2_ok, reason="transformers 4.x's PyTorch Mamba-2 path clamps Δ at "
                                  "time_step_min and ignores groups; the conversion follows mamba_ssm / transformers 5")
    M, Mc = transformers.MambaForCausalLM, transformers.MambaConfig
    M2, M2c = transformers.Mamba2ForCausalLM, transformers.Mamba2Config
    R, Rc = transformers.RwkvForCausalLM, transformers.RwkvConfig
    return [
        pytest.param(lambda: M(Mc(vocab_size=53, hidden_size=16, num_hidden_layers=2, state_size=4)), id="mamba"),
        pytest.param(lambda: M(Mc(vocab_size=61, hidden_size=24, num_hidden_layers=2, state_size=5, expand=3,
                                  conv_kernel=3, use_bias=True, use_conv_bias=False, time_step_rank=3,
                                  tie_word_embeddings=False, layer_norm_epsilon=1e-4)), id="mamba-untied-bias"),
        pytest.param(lambda: M2(M2c(vocab_size=47, hidden_size=16, num_hidden_layers=2, state_size=8, num_heads=4,
                                    head_dim=8, n_groups=1, chunk_size=16)), id="mamba2", marks=skip_old),
        pytest.param(lambda: M2(M2c(vocab_size=59, hidden_size=24, num_hidden_layers=2, state_size=6, num_heads=6,
                                    head_dim=8, n_groups=3, conv_kernel=3, chunk_size=8, use_bias=True,
                                    use_conv_bias=False, tie_word_embeddings=True, layer_norm_epsilon=1e-4,
                                    time_step_limit=(0.05, 0.9))), id="mamba2-groups-bias-limit", marks=skip_old),
        pytest.param(lambda: R(Rc(vocab_size=57, hidden_size=16, num_hidden_layers=2)), id="rwkv4"),
        pytest.param(lambda: R(Rc(vocab_size=59, hidden_size=24, num_hidden_layers=3, attention_hidden_size=20,
                                  intermediate_size=40, layer_norm_epsilon=1e-4, tie_word_embeddings=True,
                                  rescale_every=0)), id="rwkv4-widths-tied"),
    ]


@pytest.mark.parametrize("build", _hf_models())
def test_from_transformers_same_logits_and_decoding(build):
    torch.manual_seed(0)
    hf = build().eval()
    randomise(hf, seed=1)
    vocab = hf.config.vocab_size
    tokens = torch.randint(0, vocab, (2, 23))
    with torch.no_grad():
        reference = hf(tokens, use_cache=False).logits
        model = from_transformers(hf)
        assert model.config.vocab_size == vocab and not model.training
        assert_rel_close(model(tokens), reference, what="one shot")
        assert_rel_close(recurrent_logits(model, tokens, [7, 5]), reference, what="prefill + decode")
        # continue generation from our state: transformers' greedy continuation (recomputing its forward over
        # the whole sequence each token), with logits along it that match transformers' forward
        ours = sample(model, tokens, 8, temperature=0)
        assert torch.equal(ours, greedy_by_recomputing(lambda x: hf(x, use_cache=False).logits, tokens, 8))
        full = torch.cat([tokens, ours], dim=1)
        assert_rel_close(model(full), hf(full, use_cache=False).logits, what="generated sequence")
        # and transformers' own cached generate, where its decoding path agrees with its forward: its RWKV
        # decode needs batch 1 and attention_hidden_size == hidden_size, its Mamba-2 decode skips the Δ clamp
        rwkv_ok = getattr(hf.config, "attention_hidden_size", hf.config.hidden_size) == hf.config.hidden_size
        mamba2_ok = tuple(getattr(hf.config, "time_step_limit", (0.0, math.inf))) == (0.0, math.inf)
        if rwkv_ok and mamba2_ok:
            hf.generation_config.eos_token_id = None  # generate all 8 tokens, as ours does
            theirs = hf.generate(tokens[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
            assert torch.equal(ours[:1], theirs[:, tokens.shape[1]:])


def test_from_transformers_undoes_rwkv_inference_rescaling():
    transformers = pytest.importorskip("transformers")
    hf = transformers.RwkvForCausalLM(transformers.RwkvConfig(vocab_size=41, hidden_size=16, num_hidden_layers=3,
                                                              rescale_every=1)).eval()
    randomise(hf, seed=2)
    tokens = torch.randint(0, 41, (2, 11))
    with torch.no_grad():
        hf(tokens)  # an eval-mode forward divides block i's output weights by 2^i in place
        assert hf.rwkv.layers_are_rescaled
        model = from_transformers(hf)
        hf.train()  # back to the un-rescaled weights: the function the model defines
        assert_rel_close(model(tokens), hf(tokens).logits, what="rescaled RWKV")


def test_from_transformers_refuses_other_models():
    with pytest.raises(ValueError, match="Linear is not supported"):
        from_transformers(torch.nn.Linear(2, 2))


def test_a_layout_the_converter_does_not_know_is_refused_clearly(monkeypatch):
    from seqmix.interop import convert

    class OtherLayoutForCausalLM(torch.nn.Module):
        pass

    def converter(hf):
        return {}["model.layers.0.fused_qkv.weight"]  # a tensor this layout lacks

    monkeypatch.setitem(convert.CONVERTERS, "OtherLayoutForCausalLM", ("other", converter))
    with pytest.raises(ValueError, match="has no tensor 'model.layers.0.fused_qkv.weight': the converters follow"):
        from_transformers(OtherLayoutForCausalLM())
