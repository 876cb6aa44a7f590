"""Data: the byte tokenizer, corpora (the vendored Shakespeare default, or your own files) and samplers."""
from seqmix.data.corpus import load_corpus
from seqmix.data.documents import Corpus, Document
from seqmix.data.sampler import IGNORE, BatchSampler, PackedSampler
from seqmix.data.tokenizer import ByteTokenizer, bits_per_byte

__all__ = ["IGNORE", "BatchSampler", "ByteTokenizer", "Corpus", "Document", "PackedSampler", "bits_per_byte",
           "load_corpus"]
