"""transformers' ``RecurrentGemmaForCausalLM`` (Griffin) -> SeqMixLM with the same weights and logits.

Embeddings times √d_model (rounded to bfloat16, as transformers keeps it), pre-norm blocks x + temporal(norm x)
then x + mlp(norm x), the temporal blocks cycling through ``block_types``, a final norm, an LM head (tied by
default) and logits soft-capped at ``logits_soft_cap``. What becomes what:

* the RMSNorms scale by (1 + w): w + 1 is loaded; the √d scale and the cap -> ``ModelConfig.embed_scale`` and
  ``logit_soft_cap``;
* "recurrent" blocks: g = gelu_tanh(linear_y x), u = conv(linear_x x), RG-LRU with block-diagonal gates (one
  block per head) and c = 8, y = linear_out(h ⊙ g), biases everywhere; the recurrence resets at position 0
  (a = 0 there, the input unscaled) -> mixer ``rglru`` with ``bias=True``, ``reset_first=True``,
  ``expand = lru_width / hidden_size``, its in_proj = [linear_y; linear_x];
* "attention" blocks: local (sliding-window) grouped-query attention, RoPE on the first
  ``partial_rotary_factor`` of each head (rotate-half), q/k/v biases only with ``attention_bias``, the output
  bias always -> mixer ``attention`` with ``window = attention_window_size`` and ``bias=True`` (q/k/v biases of
  zero where transformers has none: the same function);
* the MLP: gelu_tanh(gate x) ⊙ up x -> down, width ``intermediate_size // 2``, biases -> ffn ``swiglu`` with
  ``activation="gelu_tanh"``, ``bias=True``.

Refused by name: ``hidden_activation`` other than "gelu_pytorch_tanh" (transformers itself builds only the default
RoPE).
"""
from __future__ import annotations

import torch

from seqmix.interop.convert import _nothing_left, _refuse, _tied, register_converter
from seqmix.model import ModelConfig


@register_converter("RecurrentGemmaForCausalLM", "recurrent_gemma")
def recurrent_gemma(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "RecurrentGemmaForCausalLM"
    if c.hidden_activation != "gelu_pytorch_tanh":
        _refuse(source, "hidden_activation", c.hidden_activation, "the tanh GELU ('gelu_pytorch_tanh')")
    rope = c.rope_parameters  # only the default type: transformers refuses others itself
    head_dim = c.hidden_size // c.num_attention_heads
    attention = {"mixer": "attention", "options": dict(
        window=c.attention_window_size, n_kv_heads=c.num_key_value_heads, head_dim=head_dim, bias=True,
        rope_theta=float(rope["rope_theta"]), rope_fraction=float(rope.get("partial_rotary_factor", 1.0)))}
    recurrent = {"mixer": "rglru", "options": dict(expand=c.lru_width / c.hidden_size, conv_size=c.conv1d_width,
                                                   c=8.0, bias=True, reset_first=True)}
    kinds = c.layers_block_type[:c.num_hidden_layers]
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
                         n_heads=c.num_attention_heads, norm_eps=c.rms_norm_eps,
                         pattern=[recurrent if kind == "linear_attention" else attention for kind in kinds],
                         ffn_options=dict(hidden=c.intermediate_size // 2, activation="gelu_tanh", bias=True),
                         embed_scale=float(hf.model.normalizer), logit_soft_cap=float(c.logits_soft_cap),
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    state = {name: t.detach() for name, t in hf.state_dict().items()}
    out = {"embed.weight": state.pop("model.embed_tokens.weight"),
           "norm.weight": state.pop("model.final_norm.weight") + 1}
    if "lm_head.weight" in state:
        out["head.weight"] = state.pop("lm_head.weight")
    for i, kind in enumerate(kinds):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        t, m = p + "temporal_block.", b + "mixer."
        out[b + "norm1.weight"] = state.pop(p + "temporal_pre_norm.weight") + 1
        out[b + "norm2.weight"] = state.pop(p + "channel_pre_norm.weight") + 1
        if kind == "linear_attention":
            for part in ("weight", "bias"):
                out[m + f"in_proj.{part}"] = torch.cat([state.pop(t + f"linear_y.{part}"),
                                                        state.pop(t + f"linear_x.{part}")])
                out[m + f"conv.conv.{part}"] = state.pop(t + f"conv_1d.{part}")
                out[m + f"out.{part}"] = state.pop(t + f"linear_out.{part}")
                out[m + f"gate_a.{part}"] = state.pop(t + f"rg_lru.recurrent_gate_{part}")
                out[m + f"gate_x.{part}"] = state.pop(t + f"rg_lru.input_gate_{part}")
            out[m + "log_lambda"] = state.pop(t + "rg_lru.recurrent_param")
        else:
            weights = [state.pop(t + f"{x}_proj.weight") for x in "qkv"]
            biases = [state.pop(t + f"{x}_proj.bias") if c.attention_bias else w.new_zeros(w.shape[0]) for x, w in
                      zip("qkv", weights)]
            out.update({m + "qkv.weight": torch.cat(weights), m + "qkv.bias": torch.cat(biases),
                        m + "out.weight": state.pop(t + "o_proj.weight"), m + "out.bias": state.pop(t + "o_proj.bias")})
        f = p + "mlp_block."
        for part in ("weight", "bias"):
            out[b + f"ffn.gate_up.{part}"] = torch.cat([state.pop(f + f"gate_proj.{part}"),
                                                         state.pop(f + f"up_proj.{part}")])
            out[b + f"ffn.down.{part}"] = state.pop(f + f"down_proj.{part}")
    _nothing_left(state, source)
    return config, out
