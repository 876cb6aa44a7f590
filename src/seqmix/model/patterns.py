"""Hybrid layer patterns: a preset name -> the mixer (and options) of each layer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class LayerSpec:
    """One layer: its mixer and options, its FFN and options (``ffn=None``: the model's ``ffn``), where its
    norms sit (``norm_position=None``: the model's) and the residual and branch scales (α, β) of its two
    sub-layers (None = (1, 1)): see ``seqmix.model.lm.Block``."""
    mixer: str
    options: dict = field(default_factory=dict)
    ffn: str | None = None
    ffn_options: dict | None = None
    norm_position: str | None = None
    mixer_scales: tuple | None = None
    ffn_scales: tuple | None = None

    @classmethod
    def parse(cls, entry) -> "LayerSpec":
        if isinstance(entry, str):
            return cls(entry)
        keys = {"mixer", "options", "ffn", "ffn_options", "norm_position", "mixer_scales", "ffn_scales"}
        if isinstance(entry, dict) and set(entry) <= keys and "mixer" in entry and all(
                isinstance(entry.get(k, {}), dict) for k in ("options", "ffn_options")):
            ffn_options = entry.get("ffn_options")
            return cls(entry["mixer"], dict(entry.get("options", {})), entry.get("ffn"),
                       None if ffn_options is None else dict(ffn_options), entry.get("norm_position"),
                       entry.get("mixer_scales"), entry.get("ffn_scales"))
        raise ValueError(f"ModelConfig.pattern entry {entry!r}: must be a mixer name or a dict with keys "
                         f"{sorted(keys)} ('mixer' required; 'ffn' a registered FFN or 'none')")


# preset name -> function(n_layers) -> list of pattern entries
PATTERNS: dict[str, Callable[[int], list]] = {}


def register_pattern(name: str):
    def deco(fn):
        PATTERNS[name] = fn
        return fn

    return deco


@register_pattern("jamba")
def jamba(n_layers: int) -> list:
    """Jamba (Lieber et al. 2024, §2): one attention layer per 8, the rest Mamba; attention sits at
    i % 8 == 4 (HF `JambaConfig`: attn_layer_period=8, attn_layer_offset=4). With fewer than 5 layers
    that position does not exist, so the one attention layer goes to the middle, i = n_layers // 2.
    Jamba's attention has no positional encoding (the Mamba layers supply order): rope off.
    Not modelled: Jamba's mixture-of-experts MLPs."""
    attention = {"mixer": "attention", "options": {"rope": False}}
    if n_layers <= 4:
        return [attention if i == n_layers // 2 else "mamba" for i in range(n_layers)]
    return [attention if i % 8 == 4 else "mamba" for i in range(n_layers)]


@register_pattern("samba")
def samba(n_layers: int) -> list:
    """Samba (Ren et al. 2024): Mamba and sliding-window attention alternating, Mamba first (layer i is
    Mamba when i is even); every layer's FFN (SwiGLU by default) follows its mixer. The paper's window is
    2048 at 4K training length; here 128, in proportion to seqmix's short contexts (another window:
    ``mixer_options={"attention": {"window": W}}``)."""
    swa = {"mixer": "attention", "options": {"window": 128}}
    return ["mamba" if i % 2 == 0 else swa for i in range(n_layers)]


@register_pattern("griffin")
def griffin(n_layers: int) -> list:
    """Griffin (De et al. 2024, §2): two recurrent (RG-LRU) blocks, then one local-attention block,
    repeated; a 2-layer model is one recurrent then one local-attention block, so that it stays a hybrid
    (the all-recurrent model is the `rglru` mixer, Hawk). The paper's local window is 1024 (2048 in
    RecurrentGemma); here 128, as for samba."""
    local = {"mixer": "attention", "options": {"window": 128}}
    return [local if i % 3 == 2 or (n_layers == 2 and i == 1) else "rglru" for i in range(n_layers)]


@register_pattern("qwen3_next")
def qwen3_next(n_layers: int) -> list:
    """Qwen3-Next (Qwen team 2025): three Gated DeltaNet layers, then one gated attention layer (sigmoid output
    gate, QK-norm per head, RoPE on a quarter of each head), repeated; a model of fewer than 4 layers ends with
    its one attention layer. Not modelled: its value heads outnumbering its query/key heads 2 : 1 (the
    ``n_k_heads`` option of ``gated_deltanet``), and the MoE MLPs (``ffn="moe"`` adds them)."""
    linear = {"mixer": "gated_deltanet", "options": {}}
    attention = {"mixer": "attention", "options": {"qk_norm": "head", "output_gate": True, "rope_fraction": 0.25}}
    last = n_layers - 1
    return [attention if i % 4 == 3 or (n_layers < 4 and i == last) else linear for i in range(n_layers)]


@register_pattern("kimi_linear")
def kimi_linear(n_layers: int) -> list:
    """Kimi Linear (Kimi Team 2025): three Kimi Delta Attention layers, then one multi-head latent attention
    layer without positional encoding, repeated; a model of fewer than 4 layers ends with its one MLA layer.
    Not modelled: the MoE MLPs (``ffn="moe"`` with ``score="sigmoid"``, ``selection_bias`` adds them)."""
    last = n_layers - 1
    mla = {"mixer": "mla", "options": {"rope": False}}
    return [mla if i % 4 == 3 or (n_layers < 4 and i == last) else "kda" for i in range(n_layers)]
