"""transformers' ``Lfm2ForCausalLM`` (Liquid AI's LFM2) -> SeqMixLM with the same weights and logits.

Pre-norm blocks, x + op(RMSNorm x) then x + SwiGLU(RMSNorm x), with ``layer_types`` of "conv" and
"full_attention"; a final RMSNorm (transformers calls it ``embedding_norm``, but it acts on the last block's
output); the LM head tied to the embeddings by default. What becomes what:

* "conv": ``Lfm2ShortConv``, [b, c, u] = in_proj x, y = out_proj(c ⊙ conv(b ⊙ u)) -> mixer ``short_conv`` with
  ``d_conv = conv_L_cache`` and ``bias = conv_bias``;
* "full_attention": grouped-query attention with an RMSNorm per head on q and k before RoPE (rotate-half,
  default type), no biases -> mixer ``attention`` with ``qk_norm="head"``, q/k/v fused into one projection;
* the MLP (w1 gate, w3 up, w2 down) -> ffn ``swiglu``, its width as transformers computes it: with
  ``block_auto_adjust_ff_dim``, ⌊2 · intermediate_size / 3⌋, then, when ``block_ffn_dim_multiplier`` is set,
  scaled by it (floored) and rounded up to a multiple of ``block_multiple_of``.

Refused by name: a RoPE type other than "default", a layer type other than the two.
"""
from __future__ import annotations

import torch

from seqmix.interop.convert import _nothing_left, _refuse, _tied, register_converter
from seqmix.model import ModelConfig


def lfm2_ffn_width(c) -> int:
    """The width of ``Lfm2MLP`` for config c (transformers' arithmetic, step by step)."""
    width = c.intermediate_size
    if c.block_auto_adjust_ff_dim:
        width = int(2 * width / 3)
        if c.block_ffn_dim_multiplier is not None:
            width = int(c.block_ffn_dim_multiplier * width)
            width = c.block_multiple_of * ((width + c.block_multiple_of - 1) // c.block_multiple_of)
    return width


@register_converter("Lfm2ForCausalLM", "lfm2")
def lfm2(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "Lfm2ForCausalLM"
    rope = dict(c.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        _refuse(source, "rope_parameters['rope_type']", rope.get("rope_type"), "the default RoPE only")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = {"mixer": "attention", "options": dict(
        n_kv_heads=c.num_key_value_heads, head_dim=head_dim, qk_norm="head", norm_eps=c.norm_eps,
        rope_theta=float(rope.get("rope_theta", c.default_theta)), chunk_size=256)}
    conv = {"mixer": "short_conv", "options": dict(n_heads=1, d_conv=c.conv_L_cache, bias=bool(c.conv_bias))}
    pattern = []
    for i, kind in enumerate(c.layer_types[:c.num_hidden_layers]):
        if kind not in ("conv", "full_attention"):
            _refuse(source, f"layer_types[{i}]", kind, "'conv' and 'full_attention' layers")
        pattern.append(conv if kind == "conv" else attention)
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
                         n_heads=c.num_attention_heads, pattern=pattern, norm_eps=c.norm_eps,
                         ffn_options={"hidden": lfm2_ffn_width(c)},
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    state = {name: t.detach() for name, t in hf.state_dict().items()}
    out = {"embed.weight": state.pop("model.embed_tokens.weight"),
           "norm.weight": state.pop("model.embedding_norm.weight")}
    if "lm_head.weight" in state:
        out["head.weight"] = state.pop("lm_head.weight")
    for i, kind in enumerate(c.layer_types[:c.num_hidden_layers]):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        m = b + "mixer."
        out[b + "norm1.weight"] = state.pop(p + "operator_norm.weight")
        out[b + "norm2.weight"] = state.pop(p + "ffn_norm.weight")
        if kind == "conv":
            for theirs, ours in (("in_proj", "in_proj"), ("conv", "conv.conv"), ("out_proj", "out")):
                for part in ("weight", "bias") if c.conv_bias else ("weight",):
                    out[f"{m}{ours}.{part}"] = state.pop(f"{p}conv.{theirs}.{part}")
        else:
            a = p + "self_attn."
            out.update({m + "qkv.weight": torch.cat([state.pop(f"{a}{x}_proj.weight") for x in "qkv"]),
                        m + "out.weight": state.pop(a + "out_proj.weight"),
                        m + "q_norm.weight": state.pop(a + "q_layernorm.weight"),
                        m + "k_norm.weight": state.pop(a + "k_layernorm.weight")})
        f = p + "feed_forward."
        out[b + "ffn.gate_up.weight"] = torch.cat([state.pop(f + "w1.weight"), state.pop(f + "w3.weight")])
        out[b + "ffn.down.weight"] = state.pop(f + "w2.weight")
    _nothing_left(state, source)
    return config, out
