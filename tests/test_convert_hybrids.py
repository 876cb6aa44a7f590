"""Converters of transformers' recurrent hybrids (Qwen3-Next, ...): the transformers model is the oracle.
Each converted model must give its logits one shot and through seqmix's state, and decoding token by token
through that state must equal transformers' own cached decode (relative error ≤ 1e-5, float32)."""
import copy
import inspect

import pytest
import torch

from helpers import assert_rel_close, randomise
from seqmix.cli import main
from seqmix.interop import from_transformers, load_pretrained
from seqmix.model.generate import sample

transformers = pytest.importorskip("transformers")


def _hf_cached_decode(hf, tokens, prefill: int) -> torch.Tensor:
    """transformers' own path: a cached prefill, then one token at a time through its cache. Positions are
    passed as ``generate()`` passes them, where the model takes them (Bamba's forward does not count the cached
    tokens itself: without them every decoded token would sit at position 0)."""
    positions = "position_ids" in inspect.signature(hf.forward).parameters

    def at(start: int, end: int) -> dict:
        return {"position_ids": torch.arange(start, end)[None]} if positions else {}

    out = hf(tokens[:, :prefill], use_cache=True, **at(0, prefill))
    cache, logits = out["cache"] if "cache" in out else out["past_key_values"], [out.logits]
    for t in range(prefill, tokens.shape[1]):
        out = hf(tokens[:, t:t + 1], cache=cache, use_cache=True, **at(t, t + 1))
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


def _seqmix_decode(model, tokens, prefill: int) -> torch.Tensor:
    logits, state = model(tokens[:, :prefill], state=model.init_state(tokens.shape[0]))
    outs = [logits]
    for t in range(prefill, tokens.shape[1]):
        logits, state = model(tokens[:, t:t + 1], state=state)
        outs.append(logits)
    return torch.cat(outs, dim=1)


def random_tokens(hf, seed: int, length: int) -> torch.Tensor:
    """Two rows of `length` token ids drawn from the model's vocabulary with `seed`."""
    return torch.randint(0, hf.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


def transformers_forward(hf, tokens, prefill: int) -> torch.Tensor:
    """transformers' uncached forward, as the decode oracle where its cached decode is known to differ."""
    return hf(tokens, use_cache=False).logits


def check_conversion(hf, seed: int = 1, length: int = 23, prefill: int = 9, norm_offset: float = 1.0,
                     gain: float = 0.7, hf_decode=_hf_cached_decode):
    """One shot within 1e-5 of transformers' forward; token by token through seqmix's state within 1e-5 of
    transformers' own cached decode (``hf_decode(hf, tokens, prefill)``, for classes whose cache differs); and
    seqmix's decode exact in float64. Relative error = max|Δ| / max|reference| over all logits.
    ``norm_offset``, ``gain``: see ``randomise``."""
    randomise(hf, seed, norm_offset, gain)
    hf.eval()
    tokens = random_tokens(hf, seed, length)
    with torch.no_grad():
        reference = hf(tokens, use_cache=False).logits
        model = from_transformers(hf)
        assert_rel_close(model(tokens), reference, what="one shot")
        theirs = hf_decode(hf, tokens, prefill)
        assert_rel_close(_seqmix_decode(model, tokens, prefill), theirs,
                         what=f"token-by-token decode against transformers' {hf_decode.__name__}")
        exact = copy.deepcopy(model).double()
        assert_rel_close(_seqmix_decode(exact, tokens, prefill), exact(tokens), rtol=1e-12,
                         what="seqmix's decode against its forward, float64")
    return model


def _qwen3_next(**overrides):
    if not hasattr(transformers, "Qwen3NextConfig"):
        pytest.skip("this transformers has no Qwen3-Next")
    fields = dict(vocab_size=97, hidden_size=64, intermediate_size=48, num_hidden_layers=4,
                  layer_types=["linear_attention"] * 3 + ["full_attention"], num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
                  linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
                  linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                  shared_expert_intermediate_size=24, mlp_only_layers=[1], decoder_sparse_step=1,
                  norm_topk_prob=True, tie_word_embeddings=False)
    fields.update(overrides)
    torch.manual_seed(0)
    return transformers.Qwen3NextForCausalLM(transformers.Qwen3NextConfig(**fields))


QWEN3_NEXT = {
    "grouped-heads-moe-dense-layer": {},
    "tied-bias-every-other-moe": dict(
        tie_word_embeddings=True, norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[], attention_bias=True,
        num_key_value_heads=1, num_hidden_layers=3, layer_types=["full_attention", "linear_attention", "full_attention"],
        linear_num_key_heads=3, linear_num_value_heads=3, linear_key_head_dim=10, linear_value_head_dim=6,
        linear_conv_kernel_dim=3, num_experts=5, num_experts_per_tok=3,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}),
    "dense-only": dict(num_experts=0, head_dim=8, num_attention_heads=8, num_key_value_heads=4,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}),
}


@pytest.mark.parametrize("overrides", list(QWEN3_NEXT.values()), ids=list(QWEN3_NEXT))
def test_qwen3_next(overrides):
    model = check_conversion(_qwen3_next(**overrides), norm_offset=0.0)  # its norms scale by 1 + weight
    kinds = [(b.mixer.registered_name, type(b.ffn).__name__) for b in model.blocks]
    c = model.config
    assert kinds[0][0] == ("attention" if overrides.get("layer_types", ["x"])[0] == "full_attention"
                           else "gated_deltanet")
    assert c.tie_embeddings == overrides.get("tie_word_embeddings", False)
    if overrides.get("num_experts", 4):
        sparse_step = overrides.get("decoder_sparse_step", 1)
        dense = set(overrides.get("mlp_only_layers", [1]))
        expected = ["MoE" if (i + 1) % sparse_step == 0 and i not in dense else "SwiGLU" for i in range(c.n_layers)]
        assert [k[1] for k in kinds] == expected


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "rope_type"),
    (dict(shared_expert_intermediate_size=0), "shared_expert_intermediate_size=0"),
])
def test_qwen3_next_refuses_what_it_cannot_represent(overrides, field):
    with pytest.raises(ValueError, match=field):
        from_transformers(_qwen3_next(**overrides))


def test_generate_from_a_saved_qwen3_next_directory(tmp_path, capsys):
    hf = _qwen3_next(vocab_size=256)
    randomise(hf, 3, norm_offset=0.0)
    hf.save_pretrained(tmp_path / "qwen3_next")
    model = load_pretrained(tmp_path / "qwen3_next")
    prompt = torch.tensor([list(b"ROMEO.")])
    with torch.no_grad():
        assert_rel_close(model(prompt), hf.eval()(prompt).logits, what="loaded from the directory")
    assert main(["generate", "--from-hf", str(tmp_path / "qwen3_next"), "--prompt", "ROMEO.",
                 "--max-new-tokens", "8", "--temperature", "0", "--no-stream"]) == 0
    greedy = sample(model, prompt, 8, temperature=0)[0]
    assert capsys.readouterr().out == "ROMEO." + bytes(greedy.tolist()).decode("utf-8", errors="replace") + "\n"


def _olmo_hybrid(**overrides):
    if not hasattr(transformers, "OlmoHybridConfig"):
        pytest.skip("this transformers has no OLMo-Hybrid")
    fields = dict(vocab_size=89, pad_token_id=0, eos_token_id=1, hidden_size=48, intermediate_size=40, num_hidden_layers=4,
                  layer_types=["linear_attention"] * 3 + ["full_attention"], num_attention_heads=4,
                  num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                  linear_value_head_dim=10, linear_conv_kernel_dim=4, linear_allow_neg_eigval=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    fields.update(overrides)
    torch.manual_seed(0)
    return transformers.OlmoHybridForCausalLM(transformers.OlmoHybridConfig(**fields))


OLMO_HYBRID = {
    "rope-grouped-heads-negative-eigenvalues": {},
    "nope-tied-bias-attention-first": dict(
        rope_parameters={"rope_type": "default", "rope_theta": None}, tie_word_embeddings=True, attention_bias=True, num_key_value_heads=4,
        linear_allow_neg_eigval=False, linear_num_key_heads=3, linear_num_value_heads=3, linear_key_head_dim=6,
        linear_value_head_dim=6, linear_conv_kernel_dim=3, num_hidden_layers=3,
        layer_types=["full_attention", "linear_attention", "full_attention"]),
}


@pytest.mark.parametrize("overrides", list(OLMO_HYBRID.values()), ids=list(OLMO_HYBRID))
def test_olmo_hybrid(overrides):
    model = check_conversion(_olmo_hybrid(**overrides))
    types = overrides.get("layer_types", ["linear_attention"] * 3 + ["full_attention"])
    assert [b.post_norm for b in model.blocks] == [t == "full_attention" for t in types]
    attention = next(b.mixer for b in model.blocks if b.post_norm)
    nope = overrides.get("rope_parameters", {"rope_theta": 1})["rope_theta"] is None  # released checkpoints'
    assert attention.rope_dims == (0 if nope else attention.head_dim)


def test_olmo_hybrid_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        from_transformers(_olmo_hybrid(hidden_act="relu"))


def _kimi_linear(**overrides):
    if not hasattr(transformers, "KimiLinearConfig"):
        pytest.skip("this transformers has no Kimi Linear")
    fields = dict(vocab_size=83, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=48, intermediate_size=40,
                  num_hidden_layers=4, layer_types=["linear_attention"] * 3 + ["full_attention"],
                  mlp_layer_types=["dense", "sparse", "sparse", "sparse"], num_attention_heads=4, num_key_value_heads=4,
                  kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
                  linear_num_heads=3, linear_head_dim=10, linear_conv_kernel_dim=4, num_experts=8,
                  num_experts_per_token=3, moe_intermediate_size=12, num_shared_experts=1, num_expert_group=4,
                  topk_group=2, routed_scaling_factor=2.5, moe_renormalize=True, tie_word_embeddings=False)
    fields.update(overrides)
    torch.manual_seed(0)
    hf = transformers.KimiLinearForCausalLM(transformers.KimiLinearConfig(**fields))
    with torch.no_grad():  # the load-balancing bias steers the choice: make it matter
        for name, buffer in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(torch.randn_like(buffer) * 0.2)
    return hf


KIMI_LINEAR = {
    "grouped-routing-kda-mla": {},
    "query-latent-tied-bias-plain-routing": dict(
        q_lora_rank=12, tie_word_embeddings=True, attention_bias=True, num_expert_group=1, topk_group=1,
        moe_renormalize=False, num_shared_experts=2, num_hidden_layers=3,
        layer_types=["full_attention", "linear_attention", "linear_attention"],
        mlp_layer_types=["sparse", "dense", "sparse"], linear_num_heads=2, linear_head_dim=8, linear_conv_kernel_dim=3),
}


@pytest.mark.parametrize("overrides", list(KIMI_LINEAR.values()), ids=list(KIMI_LINEAR))
def test_kimi_linear(overrides):
    model = check_conversion(_kimi_linear(**overrides))
    types = overrides.get("layer_types", ["linear_attention"] * 3 + ["full_attention"])
    assert [b.mixer.registered_name for b in model.blocks] == ["kda" if t == "linear_attention" else "mla" for t in types]
    mla = next(b.mixer for b in model.blocks if b.mixer.registered_name == "mla")
    state = model.init_state(1)[[b.mixer for b in model.blocks].index(mla)]["mixer"]
    assert set(state) == {"c", "k_rope", "pos"}  # the cache holds the latents, not per-head keys and values


def test_kimi_linear_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        from_transformers(_kimi_linear(num_key_value_heads=2))


def _minimax(**overrides):
    if not hasattr(transformers, "MiniMaxConfig"):
        pytest.skip("this transformers has no MiniMax")
    fields = dict(vocab_size=79, hidden_size=48, intermediate_size=20, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, layer_types=["linear_attention", "full_attention"] * 2, num_local_experts=4,
                  num_experts_per_tok=2, block_size=8, full_attn_alpha_factor=1.7, full_attn_beta_factor=0.6,
                  linear_attn_alpha_factor=1.3, linear_attn_beta_factor=0.8, mlp_alpha_factor=1.2,
                  mlp_beta_factor=0.9, tie_word_embeddings=False)
    fields.update(overrides)
    torch.manual_seed(0)
    return transformers.MiniMaxForCausalLM(transformers.MiniMaxConfig(**fields))


MINIMAX = {
    "scaled-residuals-blocks-of-8": {},
    "tied-window-head-width-top1": dict(tie_word_embeddings=True, sliding_window=6, head_dim=8, num_key_value_heads=4,
                                        num_experts_per_tok=1, num_hidden_layers=3, block_size=4,
                                        layer_types=["full_attention", "linear_attention", "linear_attention"]),
}


@pytest.mark.parametrize("overrides", list(MINIMAX.values()), ids=list(MINIMAX))
def test_minimax(overrides):
    hf = _minimax(**overrides)
    # with a lightning layer first, transformers' MiniMaxCache.get_seq_length() reads that layer's empty KV cache
    # and says 0: a cached forward without position_ids restarts the attention layers' RoPE positions at 0 (0.24
    # off its own forward); _hf_cached_decode passes the positions, as generate() does
    model = check_conversion(hf, length=27)  # longer than a few of its prefill blocks
    lightning = [b.mixer for b in model.blocks if b.mixer.registered_name == "lightning"]
    expected = [hf.model.layers[b.mixer.layer_idx].self_attn.slope_rate.flatten() for b in model.blocks
                if b.mixer.registered_name == "lightning"]
    assert all(torch.equal(m.slopes, s) for m, s in zip(lightning, expected))


def test_minimax_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        from_transformers(_minimax(hidden_act="gelu"))
