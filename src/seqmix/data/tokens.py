"""A corpus as token ids: what the samplers and the evaluation read, in memory or memory-mapped from shards.

A split is one flat array of ids (``tokens``, [N], uint8/16/32, a numpy array or a read-only memmap) and a
document index (``offsets``, int64 [D + 1]: document d is ``tokens[offsets[d]:offsets[d + 1]]``); the
tokenizer's ``token_bytes`` (int64 [V]) says how many bytes of text each id stands for, and ``n_bytes`` is the
split's size in bytes of text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seqmix.data.documents import SPLITS, Corpus, Document
from seqmix.data.tokenizer import ByteTokenizer, Tokenizer, token_dtype


@dataclass
class TokenSplit:
    tokens: np.ndarray
    offsets: np.ndarray
    token_bytes: np.ndarray
    n_bytes: int

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of every document, int64 [D]."""
        return np.diff(self.offsets)

    @classmethod
    def from_documents(cls, documents: list[Document], tokenizer: Tokenizer | None = None) -> "TokenSplit":
        """Tokenize documents in memory (bytes when no tokenizer is given)."""
        tokenizer = tokenizer or ByteTokenizer()
        dtype = token_dtype(tokenizer.vocab_size)
        ids = [tokenizer.encode_bytes(d.data).astype(dtype, copy=False) for d in documents]
        offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids])]).astype(np.int64)
        tokens = np.concatenate(ids) if ids else np.zeros(0, dtype=dtype)
        return cls(tokens, offsets, tokenizer.token_bytes, sum(len(d.data) for d in documents))


@dataclass
class TokenCorpus:
    """Every split of a corpus as tokens, with its tokenizer and what identifies its source (``sha256``: of
    the source's text, or None for the vendored corpus, which its own hashes pin)."""

    name: str
    tokenizer: Tokenizer
    splits: dict[str, TokenSplit]
    sha256: str | None = None
    info: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> TokenSplit:
        if split not in self.splits:
            raise ValueError(f"corpus split {split!r}: choose one of {list(self.splits)}")
        return self.splits[split]

    @classmethod
    def from_corpus(cls, corpus: Corpus, tokenizer: Tokenizer | None = None) -> "TokenCorpus":
        tokenizer = tokenizer or ByteTokenizer()
        return cls(corpus.name, tokenizer,
                   {s: TokenSplit.from_documents(corpus[s], tokenizer) for s in SPLITS if s in corpus.splits})
