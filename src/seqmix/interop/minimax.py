"""transformers' ``MiniMaxForCausalLM`` (MiniMax-01) -> SeqMixLM with the same weights and logits.

Blocks h = α_a · n₁(x) + β_a · mixer(n₁(x)), then α_m · n₂(h) + β_m · moe(n₂(h)): the normalised input is also
the residual (``norm_position="shared"``, with ``mixer_scales`` / ``ffn_scales`` from the config's
``{linear,full}_attn_{alpha,beta}_factor`` and ``mlp_{alpha,beta}_factor``). ``layer_types`` of
"linear_attention" (lightning attention -> mixer ``lightning``; its fixed decay rates come from the
``slope_rate`` buffer, and the blockwise-prefill buffers derived from it are not needed) and "full_attention"
(GQA attention with RoPE and the config's sliding window -> mixer ``attention``). Every MLP is a sparse MoE:
softmax router, top ``num_experts_per_tok``, renormalised, no shared experts -> ffn ``moe``. Refused by name: an
activation other than SiLU, a RoPE type other than "default", another layer type.
"""
from __future__ import annotations

import torch

from seqmix.interop.convert import _nothing_left, _refuse, _tied, register_converter
from seqmix.interop.gated_delta import _silu_and_default_rope
from seqmix.model import ModelConfig

DERIVED_BUFFERS = ("query_decay", "key_decay", "diagonal_decay")  # functions of slope_rate and block_size


@register_converter("MiniMaxForCausalLM", "minimax")
def minimax(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "MiniMaxForCausalLM"
    rope = _silu_and_default_rope(c, source)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    moe = dict(n_experts=c.num_local_experts, top_k=c.num_experts_per_tok, hidden=c.intermediate_size,
               normalize=True, aux_loss_weight=float(c.router_aux_loss_coef))
    pattern = []
    for i, kind in enumerate(c.layer_types[:c.num_hidden_layers]):
        if kind == "linear_attention":
            entry = {"mixer": "lightning", "options": {"head_dim": head_dim},
                     "mixer_scales": [c.linear_attn_alpha_factor, c.linear_attn_beta_factor]}
        elif kind == "full_attention":
            entry = {"mixer": "attention", "options": dict(
                n_kv_heads=c.num_key_value_heads, head_dim=head_dim, window=c.sliding_window,
                rope_theta=float(rope.get("rope_theta", 10000.0))),
                "mixer_scales": [c.full_attn_alpha_factor, c.full_attn_beta_factor]}
        else:
            _refuse(source, f"layer_types[{i}]", kind, "'linear_attention' and 'full_attention' layers")
        entry.update(norm_position="shared", ffn_scales=[c.mlp_alpha_factor, c.mlp_beta_factor])
        pattern.append(entry)
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
                         n_heads=c.num_attention_heads, pattern=pattern, norm_eps=c.rms_norm_eps, ffn="moe",
                         ffn_options=moe, tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    state = {name: t.detach() for name, t in hf.state_dict().items()}
    out = {"embed.weight": state.pop("model.embed_tokens.weight"), "norm.weight": state.pop("model.norm.weight")}
    if "lm_head.weight" in state:
        out["head.weight"] = state.pop("lm_head.weight")
    for i, kind in enumerate(c.layer_types[:c.num_hidden_layers]):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        a, m = p + "self_attn.", b + "mixer."
        out[b + "norm1.weight"] = state.pop(p + "input_layernorm.weight")
        out[b + "norm2.weight"] = state.pop(p + "post_attention_layernorm.weight")
        if kind == "linear_attention":
            for name in DERIVED_BUFFERS:
                state.pop(a + name)
            out.update({m + "qkv.weight": state.pop(a + "qkv_proj.weight"), m + "gate.weight": state.pop(
                a + "output_gate.weight"), m + "out.weight": state.pop(a + "out_proj.weight"),
                m + "norm.weight": state.pop(a + "norm.weight"), m + "slopes": state.pop(a + "slope_rate").flatten()})
        else:
            out[m + "qkv.weight"] = torch.cat([state.pop(a + f"{x}_proj.weight") for x in "qkv"])
            out[m + "out.weight"] = state.pop(a + "o_proj.weight")
        f, o = p + "mlp.", b + "ffn."
        out.update({o + "router.weight": state.pop(f + "gate.weight"), o + "gate_up": state.pop(f + "experts.gate_up_proj"),
                    o + "down": state.pop(f + "experts.down_proj")})
    _nothing_left(state, source)
    return config, out
