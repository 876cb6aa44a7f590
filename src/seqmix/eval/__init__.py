"""Evaluation: bits per byte and loss by token position."""
from seqmix.data.tokenizer import bits_per_byte
from seqmix.eval.bpb import evaluate, log2_buckets

__all__ = ["bits_per_byte", "evaluate", "log2_buckets"]
