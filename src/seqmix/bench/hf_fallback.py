"""The production mixers against transformers' own CPU paths, layer by layer: a one-layer transformers model
(Qwen3-Next, Kimi Linear, MiniMax, LFM2) with random weights is converted with ``from_transformers``, so both sides hold the
same weights; each layer's outputs are checked equal first, then both are timed in interleaved rounds on the
same input (one forward over the whole sequence, no autograd). transformers' layers run its torch fallbacks
(``torch_chunk_gated_delta_rule``, ``chunk_kimi_delta_attention``, SDPA attention, LFM2's convolution through
``nn.Conv1d``), what users have on CPU.

Beside them the layer's projections alone are timed in the same rounds: every linear layer of the seqmix mixer
once over as many rows as the sequence has tokens, the work both sides share (same weights, same products). The
ceiling transformers / projections is then the largest speed-up any implementation of the rest (the mixing
core, convolutions, norms, gates) could give at that size (Amdahl)."""
from __future__ import annotations

from typing import Callable

import torch

from seqmix.bench.harness import time_interleaved

# seqmix mixer -> (transformers model family, layer type, what transformers' layer runs)
LAYERS = {
    "gated_deltanet": ("qwen3_next", "linear_attention", "Qwen3NextGatedDeltaNet (torch_chunk_gated_delta_rule)"),
    "attention": ("qwen3_next", "full_attention", "Qwen3NextAttention (gated, QK-norm, partial RoPE; SDPA)"),
    "kda": ("kimi_linear", "linear_attention", "KimiLinearDeltaAttention (chunk_kimi_delta_attention)"),
    "mla": ("kimi_linear", "full_attention", "KimiLinearAttention (latent attention; SDPA)"),
    "lightning": ("minimax", "linear_attention", "MiniMaxLightningAttention (blockwise torch prefill)"),
    "short_conv": ("lfm2", "conv", "Lfm2ShortConv (nn.Conv1d)"),
}


def _one_layer_model(family: str, layer_type: str, d_model: int, heads: int, head_dim: int):
    import transformers

    common = dict(vocab_size=256, hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=1,
                  layer_types=[layer_type], num_attention_heads=heads, num_key_value_heads=heads, pad_token_id=0,
                  tie_word_embeddings=False)
    if family == "qwen3_next":
        config = transformers.Qwen3NextConfig(
            **common, head_dim=head_dim, num_experts=0, linear_num_key_heads=max(1, heads // 2),
            linear_num_value_heads=heads, linear_key_head_dim=head_dim, linear_value_head_dim=head_dim)
        model = transformers.Qwen3NextForCausalLM(config)
    elif family == "lfm2":
        config = transformers.Lfm2Config(**common, conv_L_cache=3, conv_bias=False)
        model = transformers.Lfm2ForCausalLM(config)
    elif family == "minimax":
        config = transformers.MiniMaxConfig(**common, head_dim=head_dim, num_local_experts=1, num_experts_per_tok=1)
        model = transformers.MiniMaxForCausalLM(config)
    else:
        config = transformers.KimiLinearConfig(
            **common, mlp_layer_types=["dense"], linear_num_heads=heads, linear_head_dim=head_dim,
            kv_lora_rank=4 * head_dim, qk_nope_head_dim=head_dim, qk_rope_head_dim=head_dim // 2, v_head_dim=head_dim,
            bos_token_id=1, eos_token_id=2)
        model = transformers.KimiLinearForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model.float().eval()


def _transformers_layer(family: str, layer_type: str, hf) -> Callable[[torch.Tensor], torch.Tensor]:
    layer = hf.model.layers[0]
    if family == "minimax":
        return lambda x: layer.self_attn(hidden_states=x, position_embeddings=None, attention_mask=None)[0]
    if family == "lfm2":
        return lambda x: layer.conv(x)
    if layer_type == "linear_attention":
        module = layer.linear_attn if family == "qwen3_next" else layer.self_attn
        return lambda x: module(hidden_states=x)
    if family == "qwen3_next":  # its attention takes the model's rotary embeddings
        return lambda x: layer.self_attn(x, hf.model.rotary_emb(x, torch.arange(x.shape[1])[None]), None)[0]
    return lambda x: layer.self_attn(hidden_states=x, attention_mask=None)[0]


def _projections(mixer: torch.nn.Module, L: int) -> Callable[[], None]:
    """Every linear layer of `mixer` applied once to its own random input of L rows (inputs made beforehand)."""
    linears = [m for m in mixer.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, L, m.in_features, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(linears)]
    return lambda: [m(x) for m, x in zip(linears, inputs)]


def hf_layer_suite(mixers: list[str], lengths: list[int], d_model: int, heads: int, rounds: int, min_time: float,
                   progress=None) -> list[dict]:
    """Per mixer and length: both layers' median time, the projections' median time and the ceiling it implies,
    and the outputs' relative difference (≤ 1e-4 required)."""
    from seqmix.interop import from_transformers

    unknown = sorted(set(mixers) - set(LAYERS))
    if unknown:
        raise ValueError(f"--mixers {unknown}: the transformers comparison has {sorted(LAYERS)}")
    head_dim = d_model // heads
    rows = []
    for name in mixers:
        family, layer_type, what = LAYERS[name]
        torch.manual_seed(0)
        hf = _one_layer_model(family, layer_type, d_model, heads, head_dim)
        theirs = _transformers_layer(family, layer_type, hf)
        ours = from_transformers(hf).blocks[0].mixer
        for L in lengths:
            x = torch.randn(1, L, d_model, generator=torch.Generator().manual_seed(L))
            with torch.no_grad():
                reference, mine = theirs(x), ours(x)[0]
                error = ((mine - reference).abs().max() / reference.abs().max()).item()
                if not error <= 1e-4:
                    raise RuntimeError(f"{name} at L={L}: seqmix and transformers differ by {error:.2e}")
                timings = time_interleaved({"transformers": lambda: theirs(x), "seqmix": lambda: ours(x),
                                            "projections": _projections(ours, L)}, rounds=rounds, min_time=min_time)
            row = {"suite": "hf_layers", "mixer": name, "transformers_layer": what, "L": L, "d_model": d_model,
                   "heads": heads, "head_dim": head_dim, "relative_error": error,
                   "transformers_ms": timings["transformers"].median * 1e3, "seqmix_ms": timings["seqmix"].median * 1e3,
                   "transformers_round_ms": [t * 1e3 for t in timings["transformers"].samples],
                   "seqmix_round_ms": [t * 1e3 for t in timings["seqmix"].samples],
                   "projections_ms": timings["projections"].median * 1e3,
                   "projections_round_ms": [t * 1e3 for t in timings["projections"].samples],
                   "other_cpu_share": timings["seqmix"].other_cpu_share}
            row["speedup"] = row["transformers_ms"] / row["seqmix_ms"]
            row["ceiling"] = row["transformers_ms"] / row["projections_ms"]
            rows.append(row)
            if progress:
                progress(row)
    return rows
