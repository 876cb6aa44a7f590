"""Interoperability: models from other libraries in, seqmix models out.

* ``from_transformers(hf_model) -> SeqMixLM``: Hugging Face transformers causal LMs of the classes in
  ``CONVERTERS`` (Mamba, Mamba-2, RWKV-4, Qwen3-Next, LFM2, RecurrentGemma, xLSTM, ...), same logits; a setting
  that cannot be represented exactly is refused by name.
* ``from_ttt_reference(state_dict, config) -> SeqMixLM``: the official ttt-lm-pytorch ``TTTForCausalLM``
  (TTT-Linear / TTT-MLP, Transformer or Mamba backbone), from its state dict and ``TTTConfig`` fields.
* ``SeqMixConfig`` / ``SeqMixForCausalLM`` (needs the ``seqmix[hf]`` extra): any seqmix model as a
  transformers model — AutoConfig / AutoModelForCausalLM, ``save_pretrained`` / ``from_pretrained``
  (safetensors), ``generate()`` through the recurrent state. Importing them registers them with the Auto
  classes.
* ``load_pretrained(directory) -> SeqMixLM``: a ``save_pretrained`` directory of either kind.

Only the transformers-facing parts import transformers, and only when used.
"""
from seqmix.interop import gated_delta, kimi, lfm2, mamba_hybrids, minimax, recurrent_gemma, xlstm  # register

del gated_delta, kimi, lfm2, mamba_hybrids, minimax, recurrent_gemma, xlstm
from seqmix.interop.convert import CONVERTERS, from_transformers
from seqmix.interop.ttt_reference import from_ttt_reference

__all__ = ["CONVERTERS", "from_transformers", "from_ttt_reference", "load_pretrained", "SeqMixConfig", "SeqMixForCausalLM"]


def __getattr__(name: str):
    if name in ("SeqMixConfig", "SeqMixForCausalLM", "load_pretrained"):
        from seqmix.interop import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'seqmix.interop' has no attribute {name!r}")
