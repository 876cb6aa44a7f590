"""Data: tokenizers, corpora (the vendored Shakespeare default, or your own files), token shards, samplers.

Modules import in one direction: documents <- tokenizer <- tokens <- sampler; documents <- shakespeare <-
corpus <- sources <- shards <- prepare.
"""
from seqmix.data.corpus import load_corpus
from seqmix.data.documents import Corpus, Document
from seqmix.data.prepare import open_corpus
from seqmix.data.sampler import IGNORE, BatchSampler, PackedSampler
from seqmix.data.shards import open_shards, prepare
from seqmix.data.tokenizer import ByteTokenizer, bits_per_byte
from seqmix.data.tokens import TokenCorpus, TokenSplit

__all__ = ["IGNORE", "BatchSampler", "ByteTokenizer", "Corpus", "Document", "PackedSampler", "TokenCorpus",
           "TokenSplit", "bits_per_byte", "load_corpus", "open_corpus", "open_shards", "prepare"]
