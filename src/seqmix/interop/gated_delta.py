"""transformers' Gated DeltaNet hybrids -> SeqMixLM with the same weights and logits: Qwen3-Next and
OLMo-Hybrid (see ``olmo_hybrid`` for the second).

* ``Qwen3NextForCausalLM``: ``layer_types`` of "linear_attention" (Gated DeltaNet) and "full_attention"
  (gated attention) blocks, x + mixer(norm x) then x + mlp(norm x); the MLP is a sparse MoE block on layers
  where ``num_experts > 0``, ``(i + 1) % decoder_sparse_step == 0`` and i is not in ``mlp_only_layers``, a
  SwiGLU of ``intermediate_size`` elsewhere. What becomes what:
  - its RMSNorms scale by (1 + w) (weights stored centred on 0): ours by w, so w + 1 is loaded;
  - Gated DeltaNet: ``in_proj_qkvz`` holds, per key head g, [q_g, k_g, v of its r = H_v / H_k value heads,
    z of those heads] and ``in_proj_ba`` [β logits, α logits] of the same heads; they are regrouped into our
    q, k, v, out_gate, beta and alpha projections. The gated norm's one weight per value-head channel is
    repeated for every head (ours holds one per head and channel). -> mixer ``gated_deltanet`` with
    ``n_heads = linear_num_value_heads``, ``n_k_heads = linear_num_key_heads`` and both head widths;
  - attention: ``q_proj`` holds, per head, [q_h, gate_h]; with k and v they become our fused projection
    [q, k, v, gate]; (1 + w) QK-norms; RoPE on the first ``partial_rotary_factor`` of each head (rotate-half
    pairing). -> mixer ``attention`` with ``n_kv_heads``, ``head_dim``, ``qk_norm``, ``output_gate``,
    ``rope_fraction``;
  - MoE: softmax router, top ``num_experts_per_tok``, renormalised when ``norm_topk_prob``, shared expert
    gated by σ(w · x) -> ffn ``moe`` (``shared_gate=True``), experts' stacked weights as they are.
  Refused by name: an activation other than SiLU, a RoPE type other than "default", a layer type other than
  the two, MoE layers with a shared expert of width 0.
"""
from __future__ import annotations

import torch

from seqmix.interop.convert import _nothing_left, _refuse, _require_silu_field, _tied, register_converter
from seqmix.model import ModelConfig


def _silu_and_default_rope(c, source: str) -> dict:
    """Refuse an activation other than SiLU or a RoPE type other than the default; the RoPE parameters."""
    _require_silu_field(source, "hidden_act", c.hidden_act)
    rope = dict(getattr(c, "rope_parameters", None) or {})
    if rope.get("rope_theta") is not None and rope.get("rope_type", "default") != "default":
        _refuse(source, "rope_parameters['rope_type']", rope.get("rope_type"), "the default RoPE (or none)")
    return rope


def _grouped(weight: torch.Tensor, groups: int, sizes: list[int]) -> list[torch.Tensor]:
    """Rows laid out per group as [part 0, part 1, ...] of `sizes` -> each part's rows for all groups in
    group order (weight [groups · Σ sizes, ...])."""
    parts = weight.reshape(groups, sum(sizes), *weight.shape[1:]).split(sizes, dim=1)
    return [p.reshape(groups * s, *weight.shape[1:]) for p, s in zip(parts, sizes)]


@register_converter("Qwen3NextForCausalLM", "qwen3_next")
def qwen3_next(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "Qwen3NextForCausalLM"
    rope = _silu_and_default_rope(c, source)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = {"mixer": "attention", "options": dict(
        n_kv_heads=c.num_key_value_heads, head_dim=head_dim, qk_norm="head", norm_eps=c.rms_norm_eps,
        output_gate=True, bias=bool(c.attention_bias), rope_theta=float(rope.get("rope_theta", 10000.0)),
        rope_fraction=float(rope.get("partial_rotary_factor", 1.0)), chunk_size=256)}
    linear = {"mixer": "gated_deltanet", "options": dict(
        n_heads=c.linear_num_value_heads, n_k_heads=c.linear_num_key_heads, head_dim_k=c.linear_key_head_dim,
        head_dim_v=c.linear_value_head_dim, d_conv=c.linear_conv_kernel_dim, chunk_size=32, norm_eps=c.rms_norm_eps)}
    moe_options = dict(n_experts=c.num_experts, top_k=c.num_experts_per_tok, hidden=c.moe_intermediate_size,
                       normalize=bool(c.norm_topk_prob), shared_hidden=c.shared_expert_intermediate_size,
                       shared_gate=True, aux_loss_weight=float(c.router_aux_loss_coef))
    pattern = []
    for i, kind in enumerate(c.layer_types[:c.num_hidden_layers]):
        if kind not in ("linear_attention", "full_attention"):
            _refuse(source, f"layer_types[{i}]", kind, "'linear_attention' and 'full_attention' layers")
        sparse = c.num_experts > 0 and (i + 1) % c.decoder_sparse_step == 0 and i not in c.mlp_only_layers
        if sparse and not c.shared_expert_intermediate_size:
            _refuse(source, "shared_expert_intermediate_size", 0, "MoE layers with a shared expert")
        entry = dict(linear if kind == "linear_attention" else attention)
        entry.update(ffn="moe", ffn_options=moe_options) if sparse else \
            entry.update(ffn="swiglu", ffn_options={"hidden": c.intermediate_size})
        pattern.append(entry)
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
                         n_heads=c.num_attention_heads, pattern=pattern, norm_eps=c.rms_norm_eps,
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    return config, _qwen3_next_tensors(hf, c, head_dim)


def _qwen3_next_tensors(hf, c, head_dim: int) -> dict[str, torch.Tensor]:
    state = dict(hf.state_dict())
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        return state.pop(name).detach()

    out["embed.weight"] = take("model.embed_tokens.weight")
    out["norm.weight"] = take("model.norm.weight") + 1
    if "lm_head.weight" in state:
        out["head.weight"] = take("lm_head.weight")
    Hk, H = c.linear_num_key_heads, c.linear_num_value_heads
    dk, dv, r = c.linear_key_head_dim, c.linear_value_head_dim, c.linear_num_value_heads // c.linear_num_key_heads
    for i in range(c.num_hidden_layers):
        hf_layer, ours = f"model.layers.{i}.", f"blocks.{i}."
        out[ours + "norm1.weight"] = take(hf_layer + "input_layernorm.weight") + 1
        out[ours + "norm2.weight"] = take(hf_layer + "post_attention_layernorm.weight") + 1
        if c.layer_types[i] == "linear_attention":
            p, m = hf_layer + "linear_attn.", ours + "mixer."
            q, k, v, z = _grouped(take(p + "in_proj_qkvz.weight"), Hk, [dk, dk, r * dv, r * dv])
            b, a = _grouped(take(p + "in_proj_ba.weight"), Hk, [r, r])
            out.update({m + "q.weight": q, m + "k.weight": k, m + "v.weight": v, m + "out_gate.weight": z,
                        m + "beta.weight": b, m + "alpha.weight": a, m + "conv.conv.weight": take(p + "conv1d.weight"),
                        m + "A_log": take(p + "A_log"), m + "dt_bias": take(p + "dt_bias"),
                        m + "norm.weight": take(p + "norm.weight").repeat(H), m + "out.weight": take(p + "out_proj.weight")})
        else:
            p, m = hf_layer + "self_attn.", ours + "mixer."
            for kind in ("weight", "bias") if c.attention_bias else ("weight",):
                q, gate = _grouped(take(p + f"q_proj.{kind}"), c.num_attention_heads, [head_dim, head_dim])
                out[m + f"qkv.{kind}"] = torch.cat([q, take(p + f"k_proj.{kind}"), take(p + f"v_proj.{kind}"), gate])
                out[m + f"out.{kind}"] = take(p + f"o_proj.{kind}")
            out[m + "q_norm.weight"] = take(p + "q_norm.weight") + 1
            out[m + "k_norm.weight"] = take(p + "k_norm.weight") + 1
        p, f = hf_layer + "mlp.", ours + "ffn."
        if p + "gate.weight" in state:  # a sparse MoE block
            out[f + "router.weight"] = take(p + "gate.weight")
            out[f + "gate_up"] = take(p + "experts.gate_up_proj")
            out[f + "down"] = take(p + "experts.down_proj")
            out[f + "shared.gate_up.weight"] = torch.cat([take(p + "shared_expert.gate_proj.weight"),
                                                         take(p + "shared_expert.up_proj.weight")])
            out[f + "shared.down.weight"] = take(p + "shared_expert.down_proj.weight")
            out[f + "shared_gate.weight"] = take(p + "shared_expert_gate.weight")
        else:
            out[f + "gate_up.weight"] = torch.cat([take(p + "gate_proj.weight"), take(p + "up_proj.weight")])
            out[f + "down.weight"] = take(p + "down_proj.weight")
    _nothing_left(state, "Qwen3NextForCausalLM")
    return out


@register_converter("OlmoHybridForCausalLM", "olmo_hybrid")
def olmo_hybrid(hf) -> tuple[ModelConfig, dict]:
    """``OlmoHybridForCausalLM``: "linear_attention" blocks are pre-norm, x + GDN(norm x) then x + mlp(norm x);
    "full_attention" blocks are OLMo-2's post-norm, x + norm(attn(x)) then x + norm(mlp(x)), with QK-norm over
    all heads' channels at once and RoPE only when ``rope_parameters`` gives a theta (released checkpoints run
    without: NoPE). Its GDN has separate projections, β = 2σ(·) when ``linear_allow_neg_eigval``, and a
    gated output norm whose eps is fixed at 1e-5."""
    c, source = hf.config, "OlmoHybridForCausalLM"
    rope = _silu_and_default_rope(c, source)
    use_rope = rope.get("rope_theta") is not None
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = {"mixer": "attention", "norm_position": "post", "options": dict(
        n_kv_heads=c.num_key_value_heads, head_dim=head_dim, qk_norm="all", norm_eps=c.rms_norm_eps,
        bias=bool(c.attention_bias), rope=use_rope, rope_theta=float(rope.get("rope_theta") or 10000.0))}
    linear = {"mixer": "gated_deltanet", "options": dict(
        n_heads=c.linear_num_value_heads, n_k_heads=c.linear_num_key_heads, head_dim_k=c.linear_key_head_dim,
        head_dim_v=c.linear_value_head_dim, d_conv=c.linear_conv_kernel_dim, chunk_size=32, norm_eps=1e-5,
        allow_neg_eigval=bool(c.linear_allow_neg_eigval))}
    pattern = []
    for i, kind in enumerate(c.layer_types[:c.num_hidden_layers]):
        if kind not in ("linear_attention", "full_attention"):
            _refuse(source, f"layer_types[{i}]", kind, "'linear_attention' and 'full_attention' layers")
        pattern.append(linear if kind == "linear_attention" else attention)
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
                         n_heads=c.num_attention_heads, pattern=pattern, norm_eps=c.rms_norm_eps,
                         ffn_options={"hidden": c.intermediate_size},
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    state = dict(hf.state_dict())

    def take(name: str) -> torch.Tensor:
        return state.pop(name).detach()

    out = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if "lm_head.weight" in state:
        out["head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(c.layer_types[:c.num_hidden_layers]):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        if kind == "linear_attention":
            a, m = p + "linear_attn.", b + "mixer."
            out.update({b + "norm1.weight": take(p + "input_layernorm.weight"),
                        b + "norm2.weight": take(p + "post_attention_layernorm.weight")})
            for theirs, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("a_proj", "alpha"),
                                 ("b_proj", "beta"), ("g_proj", "out_gate"), ("o_proj", "out"), ("conv1d", "conv.conv")):
                out[m + ours + ".weight"] = take(a + theirs + ".weight")
            out.update({m + "A_log": take(a + "A_log"), m + "dt_bias": take(a + "dt_bias"),
                        m + "norm.weight": take(a + "o_norm.weight").repeat(c.linear_num_value_heads)})
        else:
            a, m = p + "self_attn.", b + "mixer."
            out.update({b + "norm1.weight": take(p + "post_attention_layernorm.weight"),
                        b + "norm2.weight": take(p + "post_feedforward_layernorm.weight"),
                        m + "q_norm.weight": take(a + "q_norm.weight"), m + "k_norm.weight": take(a + "k_norm.weight")})
            for kind_ in ("weight", "bias") if c.attention_bias else ("weight",):
                out[m + f"qkv.{kind_}"] = torch.cat([take(a + f"{x}_proj.{kind_}") for x in "qkv"])
                out[m + f"out.{kind_}"] = take(a + f"o_proj.{kind_}")
        out[b + "ffn.gate_up.weight"] = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        out[b + "ffn.down.weight"] = take(p + "mlp.down_proj.weight")
    _nothing_left(state, source)
    return config, out
