"""transformers' Mamba, Mamba-2 and RWKV-4 language models -> SeqMixLM with the same weights and logits.

Each converter reads the model's config and state dict (nothing else of transformers is imported), builds
the ModelConfig that reproduces the architecture — block structure, norm kind and eps, biases, widths —
and renames every tensor. A tensor left unmapped, or a parameter of ours left unfilled, is an error: a
variant we do not represent is refused, never approximated.

What transformers builds, and what it becomes here:

* ``MambaForCausalLM``: x + mixer(RMSNorm x) blocks, no FFN, final RMSNorm, LM head (tied by default)
  -> ``mixer="mamba"``, ``ffn="none"``.
* ``Mamba2ForCausalLM``: the same blocks with Mamba-2 mixers (gate, then grouped RMSNorm, as ours)
  -> ``mixer="mamba2"`` with ``headdim``/``ngroups`` from the config, ``ffn="none"``.
* ``RwkvForCausalLM`` (RWKV-4): LayerNorm everywhere, ln0 on the embeddings (``pre_ln`` of block 0),
  time-mix + channel-mix blocks, final LayerNorm whose eps is torch's default (not the config's)
  -> ``mixer="rwkv4"``, ``ffn="rwkv_cmix"``, ``norm="layernorm"``, ``embed_norm=True``. transformers
  divides the output weights of block i by 2^(i // rescale_every) in place when the model enters eval
  mode (an fp16 overflow guard, paired with halving the residual stream); that is undone here, so the
  converted model computes the un-rescaled function, which is what the model means (training mode).
"""
from __future__ import annotations

import re
import sys
from typing import Callable

import torch

from seqmix.model import ModelConfig, SeqMixLM


def _tied(head: torch.Tensor, embed: torch.Tensor) -> bool:
    return head is embed or (head.shape == embed.shape and head.data_ptr() == embed.data_ptr())


def _require_silu(config, source: str) -> None:
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"{source}: hidden_act={act!r} is not supported (seqmix's Mamba mixers use SiLU)")


def _refuse(source: str, field: str, value, allowed: str):
    raise ValueError(f"{source}: config.{field}={value!r} cannot be represented exactly; seqmix converts {allowed}")


def _require_silu_field(source: str, field: str, value) -> None:
    if value not in ("silu", "swish"):
        _refuse(source, field, value, "SiLU ('silu')")


def _nothing_left(state: dict, source: str) -> None:
    """Refuse a model whose state dict still holds tensors after the conversion took what it knows."""
    if state:
        raise ValueError(f"{source}: tensors {sorted(state)[:8]} have no seqmix counterpart (an unsupported variant?)")


def _final_eps(norm_eps: float, final_eps: float) -> float | None:
    return None if final_eps == norm_eps else final_eps


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], source: str) -> dict[str, torch.Tensor]:
    """Map every tensor name through the first matching (regex, replacement) rule; refuse unknown names."""
    out = {}
    for name, tensor in state.items():
        for pattern, repl in rules:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, repl, name)] = tensor
                break
        else:
            raise ValueError(f"{source}: tensor {name!r} has no seqmix counterpart (an unsupported variant?)")
    return out


def load_tensors(model: SeqMixLM, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Fill every parameter and buffer of `model` from `tensors` (singleton dims may differ), exactly once."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: conversion does not cover the model: missing {missing}, unexpected {unexpected}")
    ready = {}
    for name, t in tensors.items():
        want = expected[name].shape
        if t.numel() != want.numel() or [s for s in t.shape if s != 1] != [s for s in want if s != 1]:
            raise ValueError(f"{source}: {name} has shape {tuple(t.shape)}, seqmix expects {tuple(want)} "
                             "(a configuration the converter does not represent)")
        ready[name] = t.detach().reshape(want)
    model.load_state_dict(ready, strict=True)


def _mamba(hf, source: str = "MambaForCausalLM", **mixer_options) -> tuple[ModelConfig, dict]:
    """Mamba, or a variant (``source``) with the same tensors and more ``mixer_options`` (Falcon-Mamba)."""
    c = hf.config
    _require_silu(c, source)
    tied = _tied(hf.lm_head.weight, hf.backbone.embeddings.weight)
    config = ModelConfig(
        mixer="mamba", vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
        ffn="none", tie_embeddings=tied, norm_eps=c.layer_norm_epsilon,
        final_norm_eps=_final_eps(c.layer_norm_epsilon, hf.backbone.norm_f.variance_epsilon),
        mixer_options=dict(expand=c.expand, d_state=c.state_size, d_conv=c.conv_kernel,
                           dt_rank=int(c.time_step_rank), bias=bool(c.use_bias), conv_bias=bool(c.use_conv_bias),
                           **mixer_options))
    rules = [(r"backbone\.embeddings\.weight", "embed.weight"),
             (r"backbone\.norm_f\.weight", "norm.weight"),
             (r"backbone\.layers\.(\d+)\.norm\.weight", r"blocks.\1.norm1.weight"),
             (r"backbone\.layers\.(\d+)\.mixer\.conv1d\.(weight|bias)", r"blocks.\1.mixer.conv.conv.\2"),
             (r"backbone\.layers\.(\d+)\.mixer\.(in_proj|x_proj|dt_proj|out_proj)\.(weight|bias)",
              r"blocks.\1.mixer.\2.\3"),
             (r"backbone\.layers\.(\d+)\.mixer\.(A_log|D)", r"blocks.\1.mixer.\2"),
             (r"lm_head\.weight", "head.weight")]
    return config, _rename(hf.state_dict(), rules, source)


def _mamba2(hf) -> tuple[ModelConfig, dict]:
    c = hf.config
    _require_silu(c, "Mamba2ForCausalLM")
    tied = _tied(hf.lm_head.weight, hf.backbone.embeddings.weight)
    limit = tuple(float(v) for v in c.time_step_limit)
    config = ModelConfig(
        mixer="mamba2", vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
        ffn="none", tie_embeddings=tied, norm_eps=c.layer_norm_epsilon,
        final_norm_eps=_final_eps(c.layer_norm_epsilon, hf.backbone.norm_f.variance_epsilon),
        mixer_options=dict(expand=c.expand, d_state=c.state_size, headdim=c.head_dim, ngroups=c.n_groups,
                           d_conv=c.conv_kernel, bias=bool(c.use_bias), conv_bias=bool(c.use_conv_bias),
                           norm_eps=c.layer_norm_epsilon,
                           dt_limit=None if limit == (0.0, float("inf")) else list(limit)))
    rules = [(r"backbone\.embeddings\.weight", "embed.weight"),
             (r"backbone\.norm_f\.weight", "norm.weight"),
             (r"backbone\.layers\.(\d+)\.norm\.weight", r"blocks.\1.norm1.weight"),
             (r"backbone\.layers\.(\d+)\.mixer\.conv1d\.(weight|bias)", r"blocks.\1.mixer.conv.conv.\2"),
             (r"backbone\.layers\.(\d+)\.mixer\.(in_proj|out_proj|norm)\.(weight|bias)", r"blocks.\1.mixer.\2.\3"),
             (r"backbone\.layers\.(\d+)\.mixer\.(dt_bias|A_log|D)", r"blocks.\1.mixer.\2"),
             (r"lm_head\.weight", "head.weight")]
    return config, _rename(hf.state_dict(), rules, "Mamba2ForCausalLM")


def _rwkv(hf) -> tuple[ModelConfig, dict]:
    c, rwkv = hf.config, hf.rwkv
    tied = _tied(hf.head.weight, rwkv.embeddings.weight)
    eps = rwkv.blocks[0].ln1.eps
    config = ModelConfig(
        mixer="rwkv4", vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
        ffn="rwkv_cmix", ffn_options={"hidden": c.intermediate_size}, mixer_options={"d_attn": c.attention_hidden_size},
        tie_embeddings=tied, norm="layernorm", norm_eps=eps, final_norm_eps=_final_eps(eps, rwkv.ln_out.eps),
        embed_norm=True)
    rules = [(r"rwkv\.embeddings\.weight", "embed.weight"),
             (r"rwkv\.blocks\.0\.pre_ln\.(weight|bias)", r"embed_norm.\1"),
             (r"rwkv\.blocks\.(\d+)\.ln1\.(weight|bias)", r"blocks.\1.norm1.\2"),
             (r"rwkv\.blocks\.(\d+)\.ln2\.(weight|bias)", r"blocks.\1.norm2.\2"),
             (r"rwkv\.blocks\.(\d+)\.attention\.time_mix_(k)ey", r"blocks.\1.mixer.time_mix_\2"),
             (r"rwkv\.blocks\.(\d+)\.attention\.time_mix_(v)alue", r"blocks.\1.mixer.time_mix_\2"),
             (r"rwkv\.blocks\.(\d+)\.attention\.time_mix_(r)eceptance", r"blocks.\1.mixer.time_mix_\2"),
             (r"rwkv\.blocks\.(\d+)\.attention\.(time_decay|time_first)", r"blocks.\1.mixer.\2"),
             (r"rwkv\.blocks\.(\d+)\.attention\.(key|value|receptance|output)\.weight", r"blocks.\1.mixer.\2.weight"),
             (r"rwkv\.blocks\.(\d+)\.feed_forward\.time_mix_(k)ey", r"blocks.\1.ffn.time_mix_\2"),
             (r"rwkv\.blocks\.(\d+)\.feed_forward\.time_mix_(r)eceptance", r"blocks.\1.ffn.time_mix_\2"),
             (r"rwkv\.blocks\.(\d+)\.feed_forward\.(key|receptance|value)\.weight", r"blocks.\1.ffn.\2.weight"),
             (r"rwkv\.ln_out\.(weight|bias)", r"norm.\1"),
             (r"head\.weight", "head.weight")]
    tensors = _rename(hf.state_dict(), rules, "RwkvForCausalLM")
    if rwkv.layers_are_rescaled and c.rescale_every > 0:
        for i in range(c.num_hidden_layers):
            scale = 2 ** (i // c.rescale_every)
            for name in (f"blocks.{i}.mixer.output.weight", f"blocks.{i}.ffn.value.weight"):
                tensors[name] = tensors[name] * scale
    return config, tensors


# class name -> (model_type, function(hf_model) -> (ModelConfig, tensors)); more families register themselves
# from their own modules (seqmix.interop imports them all)
CONVERTERS: dict[str, tuple[str, Callable]] = {"MambaForCausalLM": ("mamba", _mamba),
                                               "Mamba2ForCausalLM": ("mamba2", _mamba2),
                                               "RwkvForCausalLM": ("rwkv", _rwkv)}


def register_converter(class_name: str, model_type: str):
    """Decorator: `fn(hf_model) -> (ModelConfig, tensors)` converts the transformers class `class_name`."""
    def deco(fn):
        CONVERTERS[class_name] = (model_type, fn)
        return fn

    return deco


def supported_model_types() -> list[str]:
    return sorted(model_type for model_type, _ in CONVERTERS.values())


def from_transformers(hf_model) -> SeqMixLM:
    """A SeqMixLM computing the same logits as ``hf_model`` (a transformers causal LM of a class in
    ``CONVERTERS``), on its device and in its dtype, in eval mode.

    Every configuration the supported classes accept converts, except the settings each converter names when
    it refuses them (an activation other than SiLU, a RoPE scaling type, ...): nothing is converted
    approximately. The converted model runs in one shot and through its recurrent state like any SeqMixLM:
    ``logits, state = model(tokens, state=model.init_state(batch))``.
    """
    kind = type(hf_model).__name__
    if kind not in CONVERTERS:
        raise ValueError(f"from_transformers: {kind} is not supported; supported: {sorted(CONVERTERS)}")
    try:
        config, tensors = CONVERTERS[kind][1](hf_model)
    except KeyError as missing:  # a layout other than the one the converter was written against
        version = getattr(sys.modules.get("transformers"), "__version__", "?")
        raise ValueError(f"from_transformers: {kind} has no tensor {missing}: the converters follow transformers "
                         f"5.25's layouts, and this is transformers {version}") from None
    if config.tie_embeddings:
        tensors["head.weight"] = tensors["embed.weight"]
    model = SeqMixLM(config)
    load_tensors(model, tensors, kind)
    weight = hf_model.get_input_embeddings().weight
    return model.to(device=weight.device, dtype=weight.dtype).eval()
