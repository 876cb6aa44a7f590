"""transformers' ``KimiLinearForCausalLM`` -> SeqMixLM with the same weights and logits.

Pre-norm blocks, x + mixer(norm x) then x + mlp(norm x), with ``layer_types`` of "linear_attention" (Kimi Delta
Attention -> mixer ``kda``) and "full_attention" (multi-head latent attention without positional encoding ->
mixer ``mla`` with ``rope=False``; its latent norms keep transformers' eps of 1e-6), and ``mlp_layer_types``
of "sparse" (MoE: sigmoid router with the load-balancing bias used for the choice only, group-limited top-k,
renormalised weights times ``routed_scaling_factor``, ungated shared experts -> ffn ``moe``) and "dense"
(SwiGLU). KDA's forget-gate ``A_log`` [1, 1, H, 1] becomes ours [H]; its output norm's one weight per channel is
repeated for every head. Refused by name: an activation other than SiLU, ``num_key_value_heads`` other than
``num_attention_heads`` (transformers would repeat MLA's already per-head keys), MoE without shared experts.
"""
from __future__ import annotations

import torch

from seqmix.interop.convert import _nothing_left, _refuse, _tied, register_converter
from seqmix.interop.gated_delta import _silu_and_default_rope
from seqmix.model import ModelConfig


@register_converter("KimiLinearForCausalLM", "kimi_linear")
def kimi_linear(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "KimiLinearForCausalLM"
    _silu_and_default_rope(c, source)
    if c.num_key_value_heads != c.num_attention_heads:
        _refuse(source, "num_key_value_heads", c.num_key_value_heads, "latent attention with num_key_value_heads "
                f"= num_attention_heads ({c.num_attention_heads})")
    kda = {"mixer": "kda", "options": dict(n_heads=c.linear_num_heads, head_dim=c.linear_head_dim,
                                           gate_rank=c.linear_head_dim, d_conv=c.linear_conv_kernel_dim,
                                           norm_eps=c.rms_norm_eps, chunk_size=32)}
    mla = {"mixer": "mla", "options": dict(kv_rank=c.kv_lora_rank, q_rank=c.q_lora_rank, nope_dim=c.qk_nope_head_dim,
                                           rope_dim=c.qk_rope_head_dim, v_dim=c.v_head_dim, rope=False,
                                           norm_eps=1e-6, bias=bool(c.attention_bias))}
    moe = dict(n_experts=c.num_local_experts, top_k=c.num_experts_per_tok, hidden=c.moe_intermediate_size,
               score="sigmoid", normalize=bool(c.norm_topk_prob), scale=float(c.routed_scaling_factor),
               selection_bias=True, shared_hidden=c.moe_intermediate_size * c.n_shared_experts,
               n_groups=c.n_group, top_groups=c.topk_group, aux_loss_weight=0.0)
    pattern = []
    for i in range(c.num_hidden_layers):
        kind, mlp = c.layer_types[i], c.mlp_layer_types[i]
        if kind not in ("linear_attention", "full_attention"):
            _refuse(source, f"layer_types[{i}]", kind, "'linear_attention' and 'full_attention' layers")
        if mlp not in ("sparse", "dense"):
            _refuse(source, f"mlp_layer_types[{i}]", mlp, "'sparse' and 'dense' MLPs")
        if mlp == "sparse" and not c.n_shared_experts:
            _refuse(source, "num_shared_experts", c.n_shared_experts, "MoE layers with shared experts")
        entry = dict(kda if kind == "linear_attention" else mla)
        entry.update(ffn="moe", ffn_options=moe) if mlp == "sparse" else \
            entry.update(ffn="swiglu", ffn_options={"hidden": c.intermediate_size})
        pattern.append(entry)
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
                         n_heads=c.num_attention_heads, pattern=pattern, norm_eps=c.rms_norm_eps,
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    return config, _kimi_tensors(hf, c)


KDA_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "conv1d": "conv.conv", "forget_gate.f_a_proj": "decay_down",
             "forget_gate.f_b_proj": "decay_up", "b_proj": "beta", "g_a_proj": "gate_down", "g_b_proj": "gate_up",
             "o_proj": "out"}
MLA_NAMES = {"q_proj": "q", "q_a_proj": "q_down", "q_a_layernorm": "q_norm", "q_b_proj": "q",
             "kv_a_proj_with_mqa": "kv_down", "kv_a_layernorm": "kv_norm", "kv_b_proj": "kv_up", "o_proj": "out"}


def _kimi_tensors(hf, c) -> dict[str, torch.Tensor]:
    state = {name: t.detach() for name, t in hf.state_dict().items()}
    out = {"embed.weight": state.pop("model.embed_tokens.weight"), "norm.weight": state.pop("model.norm.weight")}
    if "lm_head.weight" in state:
        out["head.weight"] = state.pop("lm_head.weight")
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        out[b + "norm1.weight"] = state.pop(p + "input_layernorm.weight")
        out[b + "norm2.weight"] = state.pop(p + "post_attention_layernorm.weight")
        a, m = p + "self_attn.", b + "mixer."
        if c.layer_types[i] == "linear_attention":
            out.update({m + "A_log": state.pop(a + "forget_gate.A_log").flatten(),
                        m + "dt_bias": state.pop(a + "forget_gate.dt_bias"),
                        m + "norm.weight": state.pop(a + "o_norm.weight").repeat(c.linear_num_heads)})
            names = KDA_NAMES
        else:
            names = MLA_NAMES
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                if f"{a}{theirs}.{kind}" in state:
                    out[f"{m}{ours}.{kind}"] = state.pop(f"{a}{theirs}.{kind}")
        f, o = p + "mlp.", b + "ffn."
        if c.mlp_layer_types[i] == "sparse":
            out.update({o + "router.weight": state.pop(f + "gate.weight"),
                        o + "selection_bias": state.pop(f + "gate.e_score_correction_bias"),
                        o + "gate_up": state.pop(f + "experts.gate_up_proj"), o + "down": state.pop(f + "experts.down_proj"),
                        o + "shared.gate_up.weight": torch.cat([state.pop(f + "shared_experts.gate_proj.weight"),
                                                                state.pop(f + "shared_experts.up_proj.weight")]),
                        o + "shared.down.weight": state.pop(f + "shared_experts.down_proj.weight")})
        else:
            out[o + "gate_up.weight"] = torch.cat([state.pop(f + "gate_proj.weight"), state.pop(f + "up_proj.weight")])
            out[o + "down.weight"] = state.pop(f + "down_proj.weight")
    _nothing_left(state, "KimiLinearForCausalLM")
    return out
