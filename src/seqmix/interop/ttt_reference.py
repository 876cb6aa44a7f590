"""The official ttt-lm-pytorch ``TTTForCausalLM`` (Sun et al. 2024) -> SeqMixLM with the same logits.

The official model (github.com/test-time-training/ttt-lm-pytorch, ``ttt.py``) is, per block,

    Mamba backbone (pre_conv = share_qk = use_gate = True):
        h ← h + conv(RMSNorm h);  h ← h + TTT(RMSNorm h);  h ← h + SwiGLU(RMSNorm h)
    Transformer backbone (all three False):
        h ← h + TTT(RMSNorm h);  h ← h + SwiGLU(RMSNorm h)

then a final RMSNorm and the LM head (tied by default). Its TTT layer is seqmix's ``ttt_linear`` /
``ttt_mlp`` mixer (research/ttt.md §1 documents the state dict and forward; ``seqmix.ops.ttt`` the
math). The Mamba backbone maps to ``backbone="mamba", residual_stream=True``: the mixer then holds both
of the official block's RMSNorms, so the composition is exactly the official one. Numerics that differ
from the official code only in rounding: its RoPE tables are float32 (ours are formed in float64), and
its GELU derivative (TTT-MLP) uses truncated constants (a 3e-10 difference).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from seqmix.interop.convert import load_tensors
from seqmix.model import ModelConfig, SeqMixLM

# The official TTTConfig's defaults for the fields the conversion reads.
TTT_CONFIG_DEFAULTS = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=32,
    hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0, use_gate=False,
    share_qk=False, ttt_layer_type="linear", ttt_base_lr=1.0, mini_batch_size=16, pre_conv=False, conv_kernel=4)
BACKBONE_FLAGS = ("pre_conv", "share_qk", "use_gate")
DERIVED_BUFFERS = (".token_idx", ".rotary_emb.inv_freq")  # non-persistent in the official code; rebuilt here


def _model_config(cfg: dict) -> ModelConfig:
    if cfg["ttt_layer_type"] not in ("linear", "mlp"):
        raise ValueError(f"TTTConfig.ttt_layer_type={cfg['ttt_layer_type']!r}: must be 'linear' or 'mlp'")
    if cfg["hidden_act"] not in ("silu", "swish"):
        raise ValueError(f"TTTConfig.hidden_act={cfg['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    flags = {name: bool(cfg[name]) for name in BACKBONE_FLAGS}
    if len(set(flags.values())) != 1:
        raise ValueError(f"TTTConfig {flags}: pre_conv, share_qk and use_gate must be all True (Mamba backbone) "
                         "or all False (Transformer backbone)")
    mamba = flags["pre_conv"]
    eps = float(cfg["rms_norm_eps"])
    options = dict(backbone="mamba" if mamba else "transformer", mini_batch_size=int(cfg["mini_batch_size"]),
                   base_lr=float(cfg["ttt_base_lr"]), rope_theta=float(cfg["rope_theta"]),
                   conv_size=int(cfg["conv_kernel"]))
    if mamba:
        options.update(residual_stream=True, norm_eps=eps)
    return ModelConfig(
        mixer=f"ttt_{cfg['ttt_layer_type']}", vocab_size=int(cfg["vocab_size"]), d_model=int(cfg["hidden_size"]),
        n_layers=int(cfg["num_hidden_layers"]), n_heads=int(cfg["num_attention_heads"]), ffn="swiglu",
        ffn_options={"hidden": int(cfg["intermediate_size"])}, mixer_options=options,
        tie_embeddings=bool(cfg["tie_word_embeddings"]), norm_eps=eps)


def from_ttt_reference(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> SeqMixLM:
    """A SeqMixLM with the logits of the official ``TTTForCausalLM``, in eval mode.

    ``state_dict``: the official model's ``state_dict()`` (``lm_head.weight`` may be left out when the
    embeddings are tied). ``config``: the official ``TTTConfig``'s fields as a dict (``config.to_dict()``
    or its config.json; missing fields take TTTConfig's defaults, fields that do not change the forward —
    max_position_embeddings, scan_checkpoint_group_size, pretraining_tp, ... — are ignored).
    Unlike the official code, the converted model continues a sequence from its state at any position.
    """
    cfg = {**TTT_CONFIG_DEFAULTS, **{k: v for k, v in dict(config).items() if k in TTT_CONFIG_DEFAULTS}}
    model_config = _model_config(cfg)
    sd = {k: v for k, v in state_dict.items() if not k.endswith(DERIVED_BUFFERS)}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in sd:
            raise ValueError(f"from_ttt_reference: the state dict has no {name!r} (does it match the config "
                             f"{ {k: cfg[k] for k in ('ttt_layer_type', *BACKBONE_FLAGS)} }?)")
        used.add(name)
        return sd[name]

    mamba = model_config.layer_specs()[0].options["backbone"] == "mamba"
    H = model_config.n_heads
    out = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if model_config.tie_embeddings:
        if "lm_head.weight" in sd and not torch.equal(take("lm_head.weight"), out["embed.weight"]):
            raise ValueError("from_ttt_reference: tie_word_embeddings=True but lm_head.weight differs from the "
                             "embeddings")
    else:
        out["head.weight"] = take("lm_head.weight")
    for i in range(model_config.n_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        ttt, mixer = src + "seq_modeling_block.", dst + "mixer."
        projections = ["q_proj", "v_proj", "g_proj"] if mamba else ["q_proj", "k_proj", "v_proj"]
        lr_weight = take(ttt + "learnable_ttt_lr_weight")  # [H, 1, D]: one learning-rate row per head
        out[mixer + "in_proj.weight"] = torch.cat([take(f"{ttt}{p}.weight") for p in projections]
                                                  + [lr_weight.reshape(H, -1)])
        out[mixer + "lr_bias"] = take(ttt + "learnable_ttt_lr_bias").reshape(H)
        out[mixer + "token_idx_offset"] = take(ttt + "learnable_token_idx")
        for l in range(2 if model_config.mixer == "ttt_mlp" else 1):
            out[f"{mixer}W0.{l}"] = take(f"{ttt}W{l + 1}")
            out[f"{mixer}b0.{l}"] = take(f"{ttt}b{l + 1}")
        for name in ("ttt_norm_weight", "ttt_norm_bias"):
            out[mixer + name] = take(ttt + name)
        for name in ("weight", "bias"):
            out[f"{mixer}post_norm.{name}"] = take(f"{ttt}post_norm.{name}")
        out[mixer + "out.weight"] = take(ttt + "o_proj.weight")
        if mamba:
            out[mixer + "pre_conv_norm.weight"] = take(src + "conv.norm.weight")
            out[mixer + "ttt_norm_in.weight"] = take(src + "seq_norm.weight")
            for name in ("weight", "bias"):
                out[f"{mixer}pre_conv.conv.{name}"] = take(f"{src}conv.conv.{name}")
                out[f"{mixer}conv_q.conv.{name}"] = take(f"{ttt}conv_q.{name}")
                out[f"{mixer}conv_k.conv.{name}"] = take(f"{ttt}conv_k.{name}")
        else:
            out[dst + "norm1.weight"] = take(src + "seq_norm.weight")
        out[dst + "norm2.weight"] = take(src + "ffn_norm.weight")
        out[dst + "ffn.gate_up.weight"] = torch.cat([take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")])
        out[dst + "ffn.down.weight"] = take(src + "mlp.down_proj.weight")
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(f"from_ttt_reference: tensors with no seqmix counterpart (config mismatch?): {left}")
    if model_config.tie_embeddings:
        out["head.weight"] = out["embed.weight"]
    model = SeqMixLM(model_config)
    load_tensors(model, out, "TTTForCausalLM")
    return model.eval()
