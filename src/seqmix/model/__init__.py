from seqmix.model.config import ModelConfig
from seqmix.model.lm import Block, SeqMixLM
from seqmix.model.patterns import PATTERNS, register_pattern

__all__ = ["ModelConfig", "SeqMixLM", "Block", "PATTERNS", "register_pattern"]
