"""seqmix: beyond-the-Transformer sequence mixers in three proven-equal forms, and the arena that races them."""
from seqmix.mixers import available_mixers
from seqmix.model import ModelConfig, SeqMixLM

__version__ = "0.1.0"
__all__ = ["ModelConfig", "SeqMixLM", "available_mixers", "__version__"]
