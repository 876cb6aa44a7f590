"""transformers' ``xLSTMForCausalLM`` (xLSTM-7B, transformers' own PyTorch kernels) -> SeqMixLM with the same
weights and logits.

Pre-norm blocks x + mLSTM(RMSNorm x) then x + SwiGLU(RMSNorm x), a final RMSNorm (``out_norm``, applied whatever
``add_out_norm`` says), an untied LM head and logits soft-capped at ``output_logit_soft_cap``. What becomes what:

* ``xLSTMLayer``: q, k (width ⌊d · qk_dim_factor⌋), v, output-gate pre-activation (⌊d · v_dim_factor⌋), input
  and forget gates per head soft-capped at ``gate_soft_cap``, the mLSTM with eps ``eps``, a per-head LayerNorm
  (``norm_eps``) times a weight, σ(õ) ⊙, out_proj -> mixer ``mlstm_large`` (its fused [q, k, v, õ] and [ĩ, f̃]
  projections: transformers' ``weight_mode`` "fused" as it is, "single" concatenated);
* the feed-forward, silu(proj_up_gate x) ⊙ proj_up x -> proj_down, width d · ``ffn_proj_factor`` rounded up to
  ``ffn_round_up_to_multiple_of`` -> ffn ``swiglu``; ``output_logit_soft_cap`` -> ``ModelConfig.logit_soft_cap``.

Refused by name: ``use_bias`` (biases on the block norms, the projections and the head norms, which ours do not
carry).
"""
from __future__ import annotations

import torch

from seqmix.interop.convert import _nothing_left, _refuse, _tied, register_converter
from seqmix.model import ModelConfig


@register_converter("xLSTMForCausalLM", "xlstm")
def xlstm(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "xLSTMForCausalLM"
    if c.use_bias:
        _refuse(source, "use_bias", c.use_bias, "xLSTM without biases (use_bias=False, as xLSTM-7B)")
    layer, ffn = hf.backbone.blocks[0].mlstm_layer, hf.backbone.blocks[0].ffn
    mixer = dict(qk_dim=layer.qk_dim, v_dim=layer.v_dim, gate_soft_cap=c.gate_soft_cap, eps=c.eps,
                 norm_eps=c.norm_eps, chunk_size=c.chunk_size)
    config = ModelConfig(mixer="mlstm_large", vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_blocks,
                         n_heads=c.num_heads, mixer_options=mixer, ffn_options={"hidden": ffn.up_proj_dim},
                         norm_eps=c.norm_eps, logit_soft_cap=c.output_logit_soft_cap,
                         tie_embeddings=_tied(hf.lm_head.weight, hf.backbone.embeddings.weight))
    state = {name: t.detach() for name, t in hf.state_dict().items()}
    out = {"embed.weight": state.pop("backbone.embeddings.weight"),
           "norm.weight": state.pop("backbone.out_norm.weight"), "head.weight": state.pop("lm_head.weight")}
    fused = c.weight_mode == "fused"
    for i in range(c.num_blocks):
        p, b = f"backbone.blocks.{i}.", f"blocks.{i}."
        a, f = p + "mlstm_layer.", p + "ffn."
        out.update({b + "norm1.weight": state.pop(p + "norm_mlstm.weight"),
                    b + "norm2.weight": state.pop(p + "norm_ffn.weight"),
                    b + "mixer.norm_weight": state.pop(a + "multihead_norm.weight"),
                    b + "mixer.out.weight": state.pop(a + "out_proj.weight"),
                    b + "ffn.down.weight": state.pop(f + "proj_down.weight")})
        if fused:
            out.update({b + "mixer.qkvo.weight": state.pop(a + "qkv_opreact.weight"),
                        b + "ffn.gate_up.weight": state.pop(f + "proj_up_gate_z.weight")})
            for part in ("weight", "bias"):
                out[b + f"mixer.gates.{part}"] = state.pop(a + f"ifgate_preact.{part}")
        else:
            out.update({b + "mixer.qkvo.weight": torch.cat([state.pop(a + f"{x}.weight") for x in
                                                            ("q", "k", "v", "ogate_preact")]),
                        b + "ffn.gate_up.weight": torch.cat([state.pop(f + "proj_up_gate.weight"),
                                                             state.pop(f + "proj_up.weight")])})
            for part in ("weight", "bias"):
                out[b + f"mixer.gates.{part}"] = torch.cat([state.pop(a + f"igate_preact.{part}"),
                                                            state.pop(a + f"fgate_preact.{part}")])
    _nothing_left(state, source)
    return config, out
