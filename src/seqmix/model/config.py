"""ModelConfig: everything needed to build a SeqMixLM, validated up front with errors that name the field."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from seqmix.ffn import FFNS
from seqmix.layers import NORMS
from seqmix.mixers import MIXERS, available_mixers
from seqmix.model.patterns import PATTERNS, LayerSpec


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ModelConfig.{name}={value!r}: must be a positive integer")


NORM_POSITIONS = ("pre", "post", "shared")


def _check_ffn(name: str, value: Any) -> None:
    if value != "none" and value not in FFNS.names():
        raise ValueError(f"{name}={value!r}: unknown; choose one of {FFNS.names() + ['none']}")


def _check_norm_position(name: str, value: Any) -> None:
    if value not in NORM_POSITIONS:
        raise ValueError(f"{name}={value!r}: choose one of {list(NORM_POSITIONS)}")


class DictConfig:
    """JSON round trip for config dataclasses; unknown keys are refused by name."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; fields are {sorted(known)}")
        return cls(**d)


@dataclass
class ModelConfig(DictConfig):
    """A language model: embedding -> n_layers × [x + mixer(norm x); x + ffn(norm x)] -> norm -> head.

    * ``mixer``: one registered mixer for every layer (``available_mixers()``), or
    * ``pattern``: a hybrid, either a preset name (``seqmix.model.patterns.PATTERNS``) or a per-layer list
      whose entries are mixer names or ``{"mixer": name, "options": {...}}``.
    * ``mixer_options``: the mixer's own settings. With ``pattern``, key them by mixer name:
      ``{"mamba": {...}, "attention": {"window": 128}}``. Every mixer also takes ``n_heads`` there, its own
      head count in place of the model's (Qwen3-Next's linear layers have more heads than its attention).
    * ``ffn`` / ``ffn_options``: the channel mixer ("swiglu", "moe", ...) and its settings; ``"none"`` drops the
      FFN sub-layer (and its norm): blocks are x + mixer(norm x) only, as in Mamba. A per-layer pattern entry
      may set its own ``"ffn"`` and ``"ffn_options"`` (e.g. dense layers among MoE ones).
    * ``norm``: "rmsnorm" or "layernorm" for every norm of the model (blocks, final, embedding norm), with
      ``norm_eps``; ``final_norm_eps`` sets the final norm's eps alone (None = ``norm_eps``).
    * ``norm_position``: "pre" (x + f(norm x), the default), "post" (x + norm(f(x)), OLMo-2's placement) or
      "shared" (norm x + f(norm x): the normalised input is also the residual, MiniMax-01's); a pattern entry may
      set its own (OLMo-Hybrid's attention blocks are "post", its linear ones "pre"), and ``mixer_scales`` /
      ``ffn_scales`` (α, β) weighting the residual and the branch (α · residual + β · branch; MiniMax's).
    * ``embed_norm``: normalise the embeddings before the first block (RWKV's ln0).
    * ``embed_scale``: multiply the embeddings by this number before the first block (Gemma's √d_model; None =
      1); ``logit_soft_cap``: logits ← cap · tanh(logits / cap) (RecurrentGemma's 30; None = no cap).
    * ``mixer_conv``: kernel size of a causal depthwise convolution on every mixer's input, x + mixer(conv(norm
      x)) (Zoology's convention for recall experiments pairs every mixer with a kernel-3 one); 0 = none.
    """

    mixer: str = "attention"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    pattern: str | list | None = None
    ffn: str = "swiglu"
    mixer_options: dict = field(default_factory=dict)
    ffn_options: dict = field(default_factory=dict)
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    embed_norm: bool = False
    final_norm_eps: float | None = None
    mixer_conv: int = 0
    embed_scale: float | None = None
    logit_soft_cap: float | None = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
            _positive_int(name, getattr(self, name))
        if self.mixer_conv != 0:
            _positive_int("mixer_conv", self.mixer_conv)
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        _check_ffn("ModelConfig.ffn", self.ffn)
        _check_norm_position("ModelConfig.norm_position", self.norm_position)
        if self.norm not in NORMS:
            raise ValueError(f"ModelConfig.norm={self.norm!r}: unknown; choose one of {list(NORMS)}")
        for name, eps, optional in (("norm_eps", self.norm_eps, False), ("final_norm_eps", self.final_norm_eps, True)):
            if optional and eps is None:
                continue
            if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
                raise ValueError(f"ModelConfig.{name}={eps!r}: must be a positive number" + (" or None" * optional))
        for name in ("embed_scale", "logit_soft_cap"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
                raise ValueError(f"ModelConfig.{name}={value!r}: must be a positive number or None")
        if not isinstance(self.embed_norm, bool):
            raise ValueError(f"ModelConfig.embed_norm={self.embed_norm!r}: must be True or False")
        if not isinstance(self.mixer_options, dict) or not isinstance(self.ffn_options, dict):
            raise ValueError("ModelConfig.mixer_options and ffn_options must be dicts")
        specs = self.layer_specs()  # validates mixer / pattern / option names
        if self.pattern is None and self.mixer not in available_mixers():
            raise ValueError(f"ModelConfig.mixer={self.mixer!r}: unknown; available: {available_mixers()}")
        for spec in specs:
            allowed = MIXERS.option_names(spec.mixer) + ["n_heads"]
            if "n_heads" in spec.options:
                _positive_int(f"mixer_options[{spec.mixer!r}].n_heads", spec.options["n_heads"])
            unknown = sorted(set(spec.options) - set(allowed))
            if unknown:
                raise ValueError(f"ModelConfig.mixer_options for {spec.mixer!r}: unknown option(s) {unknown}; "
                                 f"allowed: {allowed}")
        for i, spec in enumerate(specs):
            if spec.norm_position is not None:
                _check_norm_position(f"ModelConfig.pattern[{i}].norm_position", spec.norm_position)
            for name in ("mixer_scales", "ffn_scales"):
                value = getattr(spec, name)
                if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 2 and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                    raise ValueError(f"ModelConfig.pattern[{i}].{name}={value!r}: must be a pair of numbers "
                                     "(residual scale α, branch scale β)")
            where = "ModelConfig.ffn_options" if spec.ffn is None else f"ModelConfig.pattern[{i}]"
            _check_ffn(f"ModelConfig.pattern[{i}].ffn", spec.ffn or self.ffn)
            ffn, options = self.layer_ffn(spec)
            ffn_allowed = [] if ffn == "none" else FFNS.option_names(ffn)
            unknown = sorted(set(options) - set(ffn_allowed))
            if unknown:
                raise ValueError(f"{where} for {ffn!r}: unknown option(s) {unknown}; allowed: {ffn_allowed}")

    def layer_ffn(self, spec: LayerSpec) -> tuple[str, dict]:
        """The FFN name and options of a layer: its pattern entry's, else the model's."""
        if spec.ffn is None:
            return self.ffn, dict(self.ffn_options if spec.ffn_options is None else spec.ffn_options)
        return spec.ffn, dict(spec.ffn_options or {})

    def layer_specs(self) -> list[LayerSpec]:
        """The mixer name and options of every layer."""
        if self.pattern is None:
            return [LayerSpec(self.mixer, dict(self.mixer_options)) for _ in range(self.n_layers)]
        if isinstance(self.pattern, str):
            if self.pattern not in PATTERNS:
                raise ValueError(f"ModelConfig.pattern={self.pattern!r}: unknown preset; "
                                 f"choose one of {sorted(PATTERNS)} or give a per-layer list of mixer names")
            entries = PATTERNS[self.pattern](self.n_layers)
        elif isinstance(self.pattern, (list, tuple)):
            entries = list(self.pattern)
            if len(entries) != self.n_layers:
                raise ValueError(f"ModelConfig.pattern has {len(entries)} entries but n_layers={self.n_layers}")
        else:
            raise ValueError(f"ModelConfig.pattern={self.pattern!r}: must be a preset name or a list")
        specs = [LayerSpec.parse(e) for e in entries]
        names = {s.mixer for s in specs}
        for name in names:
            if name not in available_mixers():
                raise ValueError(f"ModelConfig.pattern: unknown mixer {name!r}; available: {available_mixers()}")
        stray = sorted(set(self.mixer_options) - names)
        if stray:
            raise ValueError(f"ModelConfig.mixer_options: with a pattern, key options by mixer name; {stray} "
                             f"are not mixers of this pattern ({sorted(names)})")
        if isinstance(self.pattern, str):  # the user's mixer_options refine a preset's defaults
            return [LayerSpec(s.mixer, {**s.options, **self.mixer_options.get(s.mixer, {})}, s.ffn, s.ffn_options,
                              s.norm_position, s.mixer_scales, s.ffn_scales)
                    for s in specs]
        # an explicit per-layer entry is the most specific setting
        return [LayerSpec(s.mixer, {**self.mixer_options.get(s.mixer, {}), **s.options}, s.ffn, s.ffn_options,
                          s.norm_position, s.mixer_scales, s.ffn_scales)
                for s in specs]
