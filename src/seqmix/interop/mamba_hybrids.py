"""transformers' Mamba variants and Mamba hybrids -> SeqMixLM with the same weights and logits.

* ``FalconMambaForCausalLM``: Mamba blocks whose Δ_low, B and C pass through RMSNorms without scales
  (``mixer_rms_eps``) after x_proj -> mixer ``mamba`` with ``dt_bc_norm="rms"``; otherwise as Mamba.
"""
from __future__ import annotations

from seqmix.interop.convert import _mamba, register_converter
from seqmix.model import ModelConfig


@register_converter("FalconMambaForCausalLM", "falcon_mamba")
def falcon_mamba(hf) -> tuple[ModelConfig, dict]:
    return _mamba(hf, "FalconMambaForCausalLM", dt_bc_norm="rms", dt_bc_norm_eps=float(hf.config.mixer_rms_eps))
