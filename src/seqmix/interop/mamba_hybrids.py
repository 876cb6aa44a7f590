"""transformers' Mamba variants and Mamba hybrids -> SeqMixLM with the same weights and logits.

* ``FalconMambaForCausalLM``: Mamba blocks whose Δ_low, B and C pass through RMSNorms without scales
  (``mixer_rms_eps``) after x_proj -> mixer ``mamba`` with ``dt_bc_norm="rms"``; otherwise as Mamba.
* ``JambaForCausalLM``: pre-norm blocks, x + mixer(norm x) then x + ffn(norm x); layer i is attention when
  i % ``attn_layer_period`` == ``attn_layer_offset``, else Mamba, and its FFN a mixture of experts when
  ``num_experts`` > 1 and i % ``expert_layer_period`` == ``expert_layer_offset``, else a SwiGLU of
  ``intermediate_size``. What becomes what:
  - Mamba with RMSNorms (with scales, eps ``rms_norm_eps``) of Δ_low, B and C -> mixer ``mamba`` with
    ``dt_bc_norm="rms_weight"``;
  - attention without positional encoding (the Mamba layers supply order), grouped key/value heads
    -> mixer ``attention`` with ``rope=False``, ``n_kv_heads``; q, k, v stacked into our fused projection;
  - MoE: softmax router, top ``num_experts_per_tok``, weights not renormalised, no shared expert -> ffn ``moe``
    with ``normalize=False``, experts' stacked weights as they are.
  Refused by name: an activation other than SiLU.
* ``BambaForCausalLM``: the same pre-norm blocks, Mamba-2 everywhere except the ``attn_layer_indices`` layers,
  a SwiGLU of ``intermediate_size`` after every mixer (biases when ``mlp_bias``). Mamba-2: ``mamba_n_heads``
  heads of ``mamba_d_head`` channels in ``mamba_n_groups`` groups, gate then grouped RMSNorm, as ours ->
  mixer ``mamba2``, tensors as they are; ``time_step_limit`` -> ``dt_limit``. Attention: RoPE on the first
  ``partial_rotary_factor`` (0.5) of each head's channels, rotate-half pairing -> mixer ``attention`` with
  ``rope_fraction``. Refused by name: an activation other than SiLU, a RoPE type other than "default".
* ``GraniteMoeHybridForCausalLM`` (Granite-4.0-H): Bamba's blocks and mixers by ``layer_types`` (attention with
  RoPE when ``position_embedding_type == "rope"``, none otherwise); the FFN is a MoE of ``num_local_experts``
  SwiGLU experts (softmax over the top-k logits = softmax, top k, renormalised) plus an ungated shared SwiGLU of
  ``shared_intermediate_size`` -> ffn ``moe`` with ``shared_hidden``; the shared SwiGLU alone when there are
  no experts. Its multipliers are folded into weights (linear algebra, exact up to rounding):
  ``embedding_multiplier`` into the embeddings; ``residual_multiplier`` (x + r·f) into every mixer's output
  projection and every FFN's down projections; ``attention_multiplier`` (the softmax scale in place of
  1/√head_dim) into the query rows of the attention projection; ``logits_scaling`` (logits / s) into the final
  norm's scales (also dividing out the embedding multiplier when the head is tied to the embeddings).
  Refused by name: an activation other than SiLU, a RoPE type other than "default", a model with neither
  experts nor a shared MLP.
* ``NemotronHForCausalLM``: every layer is one pre-norm sub-layer x + f(norm x), f by ``layers_block_type``:
  Mamba-2 ("linear_attention", width ``mamba_num_heads · mamba_head_dim``), attention without positions or
  biases ("full_attention"), an ungated MLP ("mlp": W_down act(W_up x), act ``mlp_hidden_act``, relu² by
  default) or a MoE ("moe": sigmoid router with a selection bias, top ``num_experts_per_tok``, renormalised
  when ``norm_topk_prob``, times ``routed_scaling_factor``, ungated relu² experts and one ungated shared
  expert). An MLP or MoE layer becomes the FFN of the block of the mixer layer before it (the same residual
  stream, its own norm): mixer ``mamba2`` with ``d_inner`` / ``attention`` with ``rope=False``, ffn ``mlp`` /
  ``moe`` with ``expert="relu2"`` and ``selection_bias``, or ffn ``"none"`` where no FFN layer follows.
  Refused by name: an FFN layer that does not follow a mixer layer, a Mamba activation other than SiLU, an
  MLP activation other than relu², relu, GELU and SiLU (relu² alone with MoE), group-limited routing
  (``topk_group < n_group``), latent MoE projections (``moe_latent_size``), MoE with ``mlp_bias``.
* ``FalconH1ForCausalLM``: pre-norm blocks x + [Mamba-2(h) + attention(h)] with h = norm x, then x + SwiGLU(norm x)
  -> mixer ``parallel`` of ``mamba2`` (``d_inner`` = ``mamba_d_ssm``; its output norm per ``mamba_rms_norm`` and
  ``mamba_norm_before_gate`` -> ``gate_norm``) and ``attention`` (RoPE on every channel). Its multipliers are
  folded into weights (exact algebra, as for Granite): ``embedding_multiplier`` into the embeddings,
  ``lm_head_multiplier`` into the final norm's scales (divided by the embedding multiplier when tied);
  ``ssm_in_multiplier`` and the per-section ``ssm_multipliers`` (the z, x, B, C, Δ rows, transformers'
  ``mup_vector``) into in_proj, ``ssm_out_multiplier`` into out_proj; ``attention_in_multiplier`` into the
  q, k and v weights, ``key_multiplier`` into the k rows, ``attention_out_multiplier`` into the output
  projection; ``mlp_multipliers`` (gate, down) into the gate rows and the down projection.
  Refused by name: an activation other than SiLU, a RoPE type other than "default" or partial RoPE,
  ``projectors_bias`` different from ``mamba_proj_bias`` (ours has one bias setting for both projections).
* ``Zamba2ForCausalLM``: Mamba-2 blocks x + Mamba-2(norm x) ("linear_attention" layers: mixer ``mamba2``, no
  FFN, Δ clamped below at ``time_step_min``) and "hybrid" layers x + Mamba-2(norm(x + W_l · T(x, e))), where T
  is a transformer block without residuals shared by every ``num_mem_blocks``-th hybrid layer: attention on
  norm([x, e]) (e the token embeddings; 2·hidden_size channels in, heads of 2·hidden_size / heads channels,
  softmax scale 1/√(head_dim / 2), RoPE when ``use_mem_rope``), then a gated MLP (``hidden_act``) on its
  normalised output -> mixer ``zamba2_hybrid``. Each hybrid layer gets its own copy of its shared block, with
  its per-layer LoRA adapters (q, k, v when ``use_shared_attention_adapter``, and the MLP's gate_up) added into
  the copied weights, and the scale's √2 folded into the query rows: the same function, but the copies are not
  tied (training the converted model would update them separately).
  Refused by name: a MLP activation other than GELU and SiLU, ``add_bias_linear``, a RoPE type other than
  "default", a layer type other than the two.
"""
from __future__ import annotations

import torch

from seqmix.interop.convert import _mamba, _nothing_left, _refuse, _require_silu_field, _tied, register_converter
from seqmix.model import ModelConfig


@register_converter("FalconMambaForCausalLM", "falcon_mamba")
def falcon_mamba(hf) -> tuple[ModelConfig, dict]:
    return _mamba(hf, "FalconMambaForCausalLM", dt_bc_norm="rms", dt_bc_norm_eps=float(hf.config.mixer_rms_eps))


def _taker(hf):
    """(take, what is left) over ``hf``'s state dict: take(name) removes the tensor and returns it;
    take(name, optional=True) returns None when there is no such tensor (a bias a config leaves out)."""
    state = dict(hf.state_dict())

    def take(name: str, optional: bool = False) -> torch.Tensor | None:
        return None if optional and name not in state else state.pop(name).detach()

    return take, state


def _present(tensors: dict) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if t is not None}


def _attention(take, theirs: str, ours: str, bias: bool) -> dict[str, torch.Tensor]:
    """Separate q, k, v, o projections -> our fused qkv and out."""
    out = {}
    for kind in ("weight", "bias") if bias else ("weight",):
        out[ours + f"qkv.{kind}"] = torch.cat([take(theirs + f"{x}_proj.{kind}") for x in "qkv"])
        out[ours + f"out.{kind}"] = take(theirs + f"o_proj.{kind}")
    return out


def _swiglu(take, theirs: str, ours: str, bias: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for kind in ("weight", "bias") if bias else ("weight",):
        out[ours + f"gate_up.{kind}"] = torch.cat([take(theirs + f"{x}_proj.{kind}") for x in ("gate", "up")])
        out[ours + f"down.{kind}"] = take(theirs + f"down_proj.{kind}")
    return out


def _rope(source: str, c) -> dict:
    """Attention options for the default RoPE of ``c.rope_parameters``; other types are refused."""
    rope = dict(c.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        _refuse(source, "rope_parameters['rope_type']", rope.get("rope_type"), "the default RoPE only")
    return dict(rope_theta=float(rope.get("rope_theta", 10000.0)),
                rope_fraction=float(rope.get("partial_rotary_factor", 1.0)))


def _dt_limit(limit) -> list[float] | None:
    limit = (0.0, float("inf")) if limit is None else tuple(float(v) for v in limit)
    return None if limit == (0.0, float("inf")) else list(limit)


def _mamba2(take, theirs: str, ours: str) -> dict[str, torch.Tensor]:
    """transformers' Mamba-2 mixer tensors (the layout of ours) -> ours; absent biases and norm are skipped."""
    out = {ours + name: take(theirs + name) for name in ("in_proj.weight", "out_proj.weight", "dt_bias", "A_log", "D")}
    out[ours + "conv.conv.weight"] = take(theirs + "conv1d.weight")
    out.update(_present({ours + "norm.weight": take(theirs + "norm.weight", optional=True),
                         ours + "conv.conv.bias": take(theirs + "conv1d.bias", optional=True),
                         ours + "in_proj.bias": take(theirs + "in_proj.bias", optional=True),
                         ours + "out_proj.bias": take(theirs + "out_proj.bias", optional=True)}))
    return out


@register_converter("JambaForCausalLM", "jamba")
def jamba(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "JambaForCausalLM"
    _require_silu_field(source, "hidden_act", c.hidden_act)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = {"mixer": "attention", "options": dict(
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim, rope=False)}
    mamba = {"mixer": "mamba", "options": dict(
        expand=c.mamba_expand, d_state=c.mamba_d_state, d_conv=c.mamba_d_conv, dt_rank=int(c.mamba_dt_rank),
        bias=bool(c.mamba_proj_bias), conv_bias=bool(c.mamba_conv_bias), dt_bc_norm="rms_weight",
        dt_bc_norm_eps=c.rms_norm_eps)}
    moe = {"ffn": "moe", "ffn_options": dict(
        n_experts=c.num_experts, top_k=c.num_experts_per_tok, hidden=c.intermediate_size, normalize=False,
        aux_loss_weight=float(c.router_aux_loss_coef))}
    swiglu = {"ffn": "swiglu", "ffn_options": {"hidden": c.intermediate_size}}
    kinds, experts = c.layers_block_type, c.layers_num_experts
    pattern = [{**(attention if kind == "attention" else mamba), **(moe if e > 1 else swiglu)}
               for kind, e in zip(kinds, experts)]
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
                         pattern=pattern, norm_eps=c.rms_norm_eps,
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    take, left = _taker(hf)
    out = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.final_layernorm.weight"),
           "head.weight": take("lm_head.weight")}
    for i, (kind, e) in enumerate(zip(kinds, experts)):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        out.update({b + "norm1.weight": take(p + "input_layernorm.weight"),
                    b + "norm2.weight": take(p + "pre_ff_layernorm.weight")})
        if kind == "attention":
            out.update(_attention(take, p + "self_attn.", b + "mixer.", bias=False))
        else:
            m = p + "mamba."
            for theirs, ours in (("conv1d", "conv.conv"), ("in_proj", "in_proj"), ("x_proj", "x_proj"),
                                 ("dt_proj", "dt_proj"), ("out_proj", "out_proj"), ("dt_layernorm", "dt_norm"),
                                 ("b_layernorm", "B_norm"), ("c_layernorm", "C_norm")):
                out.update(_present({b + f"mixer.{ours}.{x}": take(m + f"{theirs}.{x}", optional=x == "bias")
                                     for x in ("weight", "bias")}))
            out.update({b + "mixer.A_log": take(m + "A_log"), b + "mixer.D": take(m + "D")})
        f = p + "feed_forward."
        if e > 1:
            out.update({b + "ffn.router.weight": take(f + "router.weight"),
                        b + "ffn.gate_up": take(f + "experts.gate_up_proj"),
                        b + "ffn.down": take(f + "experts.down_proj")})
        else:
            out.update(_swiglu(take, f, b + "ffn."))
    _nothing_left(left, source)
    return config, out


def _mamba2_entry(c) -> dict:
    """The Mamba-2 layer of Bamba's and Granite-4.0-H's configs (their ``mamba_*`` fields)."""
    return {"mixer": "mamba2", "options": dict(
        expand=c.mamba_expand, d_state=c.mamba_d_state, headdim=c.mamba_d_head,
        ngroups=c.mamba_n_groups, d_conv=c.mamba_d_conv, bias=bool(c.mamba_proj_bias),
        conv_bias=bool(c.mamba_conv_bias), norm_eps=c.rms_norm_eps, dt_limit=_dt_limit(c.time_step_limit))}


@register_converter("BambaForCausalLM", "bamba")
def bamba(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "BambaForCausalLM"
    _require_silu_field(source, "hidden_act", c.hidden_act)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = {"mixer": "attention", "options": dict(
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim,
        bias=bool(c.attention_bias), **_rope(source, c))}
    mamba2 = _mamba2_entry(c)
    kinds = c.layers_block_type
    pattern = [attention if kind == "full_attention" else mamba2 for kind in kinds]
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
                         pattern=pattern, norm_eps=c.rms_norm_eps, ffn_options=dict(
                             hidden=c.intermediate_size, bias=bool(c.mlp_bias)),
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    take, left = _taker(hf)
    out = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.final_layernorm.weight"),
           "head.weight": take("lm_head.weight")}
    for i, kind in enumerate(kinds):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        out.update({b + "norm1.weight": take(p + "input_layernorm.weight"),
                    b + "norm2.weight": take(p + "pre_ff_layernorm.weight")})
        if kind == "full_attention":
            out.update(_attention(take, p + "self_attn.", b + "mixer.", bias=c.attention_bias))
        else:
            out.update(_mamba2(take, p + "mamba.", b + "mixer."))
        out.update(_swiglu(take, p + "feed_forward.", b + "ffn.", bias=c.mlp_bias))
    _nothing_left(left, source)
    return config, out


@register_converter("GraniteMoeHybridForCausalLM", "granitemoehybrid")
def granite_moe_hybrid(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "GraniteMoeHybridForCausalLM"
    _require_silu_field(source, "hidden_act", c.hidden_act)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    use_rope = c.position_embedding_type == "rope"
    attention = {"mixer": "attention", "options": dict(
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim,
        bias=bool(c.attention_bias), rope=use_rope, **(_rope(source, c) if use_rope else {}))}
    mamba2 = _mamba2_entry(c)
    experts = c.num_local_experts > 0
    if not experts and not c.shared_intermediate_size:
        _refuse(source, "shared_intermediate_size", 0, "a shared MLP when there are no experts")
    ffn = dict(ffn="moe", ffn_options=dict(
        n_experts=c.num_local_experts, top_k=c.num_experts_per_tok, hidden=c.intermediate_size,
        shared_hidden=c.shared_intermediate_size, aux_loss_weight=float(c.router_aux_loss_coef))) if experts else \
        dict(ffn="swiglu", ffn_options={"hidden": c.shared_intermediate_size})
    kinds = c.layer_types[:c.num_hidden_layers]
    pattern = []
    for i, kind in enumerate(kinds):
        if kind not in ("linear_attention", "full_attention"):
            _refuse(source, f"layer_types[{i}]", kind, "'linear_attention' (Mamba-2) and 'full_attention' layers")
        pattern.append(attention if kind == "full_attention" else mamba2)
    tied = _tied(hf.lm_head.weight, hf.model.embed_tokens.weight)
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
                         pattern=pattern, norm_eps=c.rms_norm_eps, tie_embeddings=tied, **ffn)
    take, left = _taker(hf)
    r, embed_scale = float(c.residual_multiplier), float(c.embedding_multiplier)
    out = {"embed.weight": take("model.embed_tokens.weight") * embed_scale, "head.weight": take("lm_head.weight"),
           "norm.weight": take("model.norm.weight") / float(c.logits_scaling) / (embed_scale if tied else 1.0)}
    q_scale = float(c.attention_multiplier) * head_dim ** 0.5
    for i, kind in enumerate(kinds):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        out.update({b + "norm1.weight": take(p + "input_layernorm.weight"),
                    b + "norm2.weight": take(p + "post_attention_layernorm.weight")})
        if kind == "full_attention":
            attn = _attention(take, p + "self_attn.", b + "mixer.", bias=c.attention_bias)
            q_rows = c.num_attention_heads * head_dim
            for name in [n for n in attn if ".qkv." in n]:
                attn[name] = torch.cat([attn[name][:q_rows] * q_scale, attn[name][q_rows:]])
            out.update(_scaled(attn, (b + "mixer.out.weight", b + "mixer.out.bias"), r))
        else:
            out.update(_scaled(_mamba2(take, p + "mamba.", b + "mixer."),
                               (b + "mixer.out_proj.weight", b + "mixer.out_proj.bias"), r))
        gate_up, down = take(p + "shared_mlp.input_linear.weight"), take(p + "shared_mlp.output_linear.weight")
        if c.shared_intermediate_size:  # (a shared MLP of width 0 adds 0)
            f = b + ("ffn.shared." if experts else "ffn.")
            out.update({f + "gate_up.weight": gate_up, f + "down.weight": down * r})
        if experts:
            m = p + "block_sparse_moe."
            out.update({b + "ffn.router.weight": take(m + "router.weight"),
                        b + "ffn.gate_up": take(m + "experts.gate_up_proj"),
                        b + "ffn.down": take(m + "experts.down_proj") * r})
    _nothing_left(left, source)
    return config, out


def _scaled(tensors: dict, names: tuple[str, ...], scale: float) -> dict[str, torch.Tensor]:
    """`tensors` with those of `names` that are present multiplied by `scale`."""
    return {name: t * scale if name in names else t for name, t in tensors.items()}


@register_converter("NemotronHForCausalLM", "nemotron_h")
def nemotron_h(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "NemotronHForCausalLM"
    kinds = list(c.layers_block_type)
    _require_silu_field(source, "mamba_hidden_act", c.mamba_hidden_act)
    if c.mlp_hidden_act not in ("relu2", "relu", "gelu", "silu"):
        _refuse(source, "mlp_hidden_act", c.mlp_hidden_act, "'relu2', 'relu', 'gelu' and 'silu'")
    if "moe" in kinds:
        for field, value, ok, allowed in (
                ("mlp_hidden_act", c.mlp_hidden_act, c.mlp_hidden_act == "relu2", "relu² experts ('relu2')"),
                ("moe_latent_size", c.moe_latent_size, c.moe_latent_size is None, "experts without latent projections"),
                ("topk_group", c.topk_group, c.topk_group >= c.n_group, "routing without group limits"),
                ("mlp_bias", c.mlp_bias, not c.mlp_bias, "MoE layers without biases")):
            if not ok:
                _refuse(source, field, value, allowed)
    mamba2 = {"mixer": "mamba2", "options": dict(
        d_inner=c.mamba_num_heads * c.mamba_head_dim, headdim=c.mamba_head_dim,
        d_state=c.ssm_state_size, ngroups=c.n_groups, d_conv=c.conv_kernel, bias=bool(c.use_bias),
        conv_bias=bool(c.use_conv_bias), norm_eps=c.layer_norm_epsilon, dt_limit=_dt_limit(c.time_step_limit))}
    attention = {"mixer": "attention", "options": dict(
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, rope=False)}
    ffns = {"mlp": dict(ffn="mlp", ffn_options=dict(hidden=c.intermediate_size, activation=c.mlp_hidden_act,
                                                     bias=bool(c.mlp_bias))),
            "moe": dict(ffn="moe", ffn_options=dict(
                n_experts=c.n_routed_experts, top_k=c.num_experts_per_tok, hidden=c.moe_intermediate_size,
                score="sigmoid", selection_bias=True, normalize=bool(c.norm_topk_prob),
                scale=float(c.routed_scaling_factor), shared_hidden=c.moe_shared_expert_intermediate_size,
                expert="relu2", aux_loss_weight=0.0))}
    blocks: list[list] = []  # [mixer layer, FFN layer or None] per seqmix block
    for i, kind in enumerate(kinds):
        if kind in ("linear_attention", "full_attention"):
            blocks.append([i, None])
        elif kind in ffns and blocks and blocks[-1][1] is None:
            blocks[-1][1] = i
        else:
            _refuse(source, f"layers_block_type[{i}]", kind, "Mamba-2 and attention layers, each followed by at "
                    "most one MLP or MoE layer")
    pattern = [{**(mamba2 if kinds[m] == "linear_attention" else attention),
                **(ffns[kinds[f]] if f is not None else {"ffn": "none"})} for m, f in blocks]
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=len(blocks), n_heads=1,
                         pattern=pattern, norm_eps=c.layer_norm_epsilon,
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embeddings.weight))
    take, left = _taker(hf)
    out = {"embed.weight": take("model.embeddings.weight"), "norm.weight": take("model.norm_f.weight"),
           "head.weight": take("lm_head.weight")}
    for j, (m, f) in enumerate(blocks):
        b, p = f"blocks.{j}.", f"model.layers.{m}."
        out[b + "norm1.weight"] = take(p + "norm.weight")
        if kinds[m] == "linear_attention":
            out.update(_mamba2(take, p + "mixer.", b + "mixer."))
        else:
            out.update(_attention(take, p + "mixer.", b + "mixer.", bias=False))
        if f is None:
            continue
        p = f"model.layers.{f}."
        out[b + "norm2.weight"] = take(p + "norm.weight")
        if kinds[f] == "mlp":
            out.update(_present({b + f"ffn.{x}.{kind}": take(p + f"mixer.{x}_proj.{kind}", optional=kind == "bias")
                                 for x in ("up", "down") for kind in ("weight", "bias")}))
        else:
            e = p + "mixer."
            out.update({b + "ffn.router.weight": take(e + "gate.weight"),
                        b + "ffn.selection_bias": take(e + "gate.e_score_correction_bias"),
                        b + "ffn.gate_up": take(e + "experts.up_proj"), b + "ffn.down": take(e + "experts.down_proj"),
                        b + "ffn.shared.up.weight": take(e + "shared_experts.up_proj.weight"),
                        b + "ffn.shared.down.weight": take(e + "shared_experts.down_proj.weight")})
    _nothing_left(left, source)
    return config, out


@register_converter("FalconH1ForCausalLM", "falcon_h1")
def falcon_h1(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "FalconH1ForCausalLM"
    _require_silu_field(source, "hidden_act", c.hidden_act)
    rope = _rope(source, c)
    if rope.pop("rope_fraction") != 1.0:
        _refuse(source, "rope_parameters['partial_rotary_factor']", c.rope_parameters["partial_rotary_factor"],
                "RoPE on every channel")
    if bool(c.projectors_bias) != bool(c.mamba_proj_bias):
        _refuse(source, "projectors_bias", c.projectors_bias, f"the same as mamba_proj_bias={c.mamba_proj_bias}")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    d_inner = c.mamba_d_ssm if c.mamba_d_ssm is not None else int(c.mamba_expand * c.hidden_size)
    mamba2 = {"mixer": "mamba2", "options": dict(
        d_inner=d_inner, headdim=c.mamba_d_head, d_state=c.mamba_d_state, ngroups=c.mamba_n_groups,
        d_conv=c.mamba_d_conv, bias=bool(c.mamba_proj_bias), conv_bias=bool(c.mamba_conv_bias),
        norm_eps=c.rms_norm_eps, dt_limit=_dt_limit(c.time_step_limit),
        gate_norm="gate_only" if not c.mamba_rms_norm else "norm_then_gate" if c.mamba_norm_before_gate
        else "gate_then_norm")}
    attention = {"mixer": "attention", "options": dict(
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim,
        bias=bool(c.attention_bias), **rope)}
    tied = _tied(hf.lm_head.weight, hf.model.embed_tokens.weight)
    parallel = {"mixer": "parallel", "options": {"mixers": [mamba2, attention]}}
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
                         pattern=[parallel] * c.num_hidden_layers, norm_eps=c.rms_norm_eps, tie_embeddings=tied,
                         ffn_options=dict(hidden=c.intermediate_size, bias=bool(c.mlp_bias)))
    take, left = _taker(hf)
    embed_scale = float(c.embedding_multiplier)
    out = {"embed.weight": take("model.embed_tokens.weight") * embed_scale, "head.weight": take("lm_head.weight"),
           "norm.weight": take("model.final_layernorm.weight") * float(c.lm_head_multiplier)
           / (embed_scale if tied else 1.0)}
    q_rows, kv_rows = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    gate_scale, down_scale = (float(v) for v in c.mlp_multipliers)
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        m, a = b + "mixer.mixers.0.", b + "mixer.mixers.1."
        out.update({b + "norm1.weight": take(p + "input_layernorm.weight"),
                    b + "norm2.weight": take(p + "pre_ff_layernorm.weight")})
        mamba = _mamba2(take, p + "mamba.", m)
        mup = hf.model.layers[i].mamba.mup_vector.reshape(-1, 1).to(mamba[m + "in_proj.weight"].dtype)
        mamba[m + "in_proj.weight"] = mamba[m + "in_proj.weight"] * (mup * float(c.ssm_in_multiplier))
        if m + "in_proj.bias" in mamba:
            mamba[m + "in_proj.bias"] = mamba[m + "in_proj.bias"] * mup[:, 0]
        out.update(_scaled(mamba, (m + "out_proj.weight", m + "out_proj.bias"), float(c.ssm_out_multiplier)))
        attn = _attention(take, p + "self_attn.", a, bias=c.attention_bias)
        k_scale = torch.ones(q_rows + 2 * kv_rows, 1, dtype=attn[a + "qkv.weight"].dtype)
        k_scale[q_rows:q_rows + kv_rows] = float(c.key_multiplier)
        attn[a + "qkv.weight"] = attn[a + "qkv.weight"] * k_scale * float(c.attention_in_multiplier)
        if c.attention_bias:
            attn[a + "qkv.bias"] = attn[a + "qkv.bias"] * k_scale[:, 0]
        out.update(_scaled(attn, (a + "out.weight", a + "out.bias"), float(c.attention_out_multiplier)))
        mlp = _swiglu(take, p + "feed_forward.", b + "ffn.", bias=c.mlp_bias)
        scale = torch.ones(2 * c.intermediate_size, 1, dtype=mlp[b + "ffn.gate_up.weight"].dtype)
        scale[:c.intermediate_size] = gate_scale
        mlp[b + "ffn.gate_up.weight"] = mlp[b + "ffn.gate_up.weight"] * scale
        if c.mlp_bias:
            mlp[b + "ffn.gate_up.bias"] = mlp[b + "ffn.gate_up.bias"] * scale[:, 0]
        out.update(_scaled(mlp, (b + "ffn.down.weight", b + "ffn.down.bias"), down_scale))
    _nothing_left(left, source)
    return config, out


@register_converter("Zamba2ForCausalLM", "zamba2")
def zamba2(hf) -> tuple[ModelConfig, dict]:
    c, source = hf.config, "Zamba2ForCausalLM"
    if c.hidden_act not in ("gelu", "silu"):
        _refuse(source, "hidden_act", c.hidden_act, "'gelu' and 'silu'")
    if c.add_bias_linear:
        _refuse(source, "add_bias_linear", True, "models without linear biases")
    mamba2 = dict(expand=c.mamba_expand, headdim=c.mamba_headdim, d_state=c.mamba_d_state, ngroups=c.mamba_ngroups,
                  d_conv=c.mamba_d_conv, norm_eps=1e-5, dt_limit=[float(c.time_step_min), float("inf")])
    rope = dict(_rope(source, c), rope=True) if c.use_mem_rope else dict(rope=False)
    head_dim = c.attention_head_dim
    hybrid = {"mixer": "zamba2_hybrid", "options": dict(
        attention=dict(n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim, **rope),
        mamba2=mamba2, hidden=c.intermediate_size, activation=c.hidden_act, norm_eps=c.rms_norm_eps)}
    kinds = list(c.layers_block_type)
    pattern = []
    for i, kind in enumerate(kinds):
        if kind not in ("linear_attention", "hybrid"):
            _refuse(source, f"layers_block_type[{i}]", kind, "'linear_attention' (Mamba-2) and 'hybrid' layers")
        pattern.append(hybrid if kind == "hybrid" else {"mixer": "mamba2", "options": mamba2})
    config = ModelConfig(vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=1,
                         pattern=pattern, ffn="none", norm_eps=c.rms_norm_eps,
                         tie_embeddings=_tied(hf.lm_head.weight, hf.model.embed_tokens.weight))
    take, left = _taker(hf)
    out = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.final_layernorm.weight"),
           "head.weight": take("lm_head.weight")}
    for i, kind in enumerate(kinds):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        if kind == "linear_attention":
            out[b + "norm1.weight"] = take(p + "input_layernorm.weight")
            out.update(_mamba2(take, p + "mamba.", b + "mixer."))
            continue
        j, st, m = c.hybrid_layer_ids.index(i), p + "shared_transformer.", b + "mixer."

        def adapted(weight: str, adapters: str) -> torch.Tensor:
            """The shared weight plus this layer's LoRA adapter, B A (when the model has one)."""
            w = take(weight)
            if adapters + f"{j}.0.weight" in left:
                w = w + take(adapters + f"{j}.1.weight") @ take(adapters + f"{j}.0.weight")
            return w

        a = st + "self_attn."
        q, k, v = (adapted(a + f"{x}_proj.weight", a + f"linear_{x}_adapter_list.") for x in "qkv")
        out.update({m + "attn_norm.weight": take(st + "input_layernorm.weight"),
                    m + "attention.qkv.weight": torch.cat([q * 2 ** 0.5, k, v]),
                    m + "attention.out.weight": take(a + "o_proj.weight"),
                    m + "mlp_norm.weight": take(st + "pre_ff_layernorm.weight"),
                    m + "mlp.gate_up.weight": adapted(st + "feed_forward.gate_up_proj.weight",
                                                      st + "feed_forward.gate_up_proj_adapter_list."),
                    m + "mlp.down.weight": take(st + "feed_forward.down_proj.weight"),
                    m + "linear.weight": take(p + "linear.weight"),
                    m + "mamba_norm.weight": take(p + "mamba_decoder.input_layernorm.weight")})
        out.update(_mamba2(take, p + "mamba_decoder.mamba.", m + "mamba2."))
        for name in [n for n in left if n.startswith(st) and "_adapter_list." in n]:
            take(name)  # the other hybrid layers' adapters, seen through this layer's copy of the shared block
    _nothing_left(left, source)
    return config, out
