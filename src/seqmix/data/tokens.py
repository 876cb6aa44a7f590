"""A corpus as token ids: what the samplers and the evaluation read, in memory or from shard files.

A split is one flat sequence of ids (``tokens``, [N], uint8/16/32: a numpy array, or a ``TokenFile`` read
window by window) and a document index (``offsets``, int64 [D + 1]: document d is ``tokens[offsets[d]:offsets[d + 1]]``); the
tokenizer's ``token_bytes`` (int64 [V]) says how many bytes of text each id stands for, and ``n_bytes`` is the
split's size in bytes of text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqmix.data.documents import SPLITS, Corpus, Document
from seqmix.data.tokenizer import ByteTokenizer, Tokenizer, token_dtype


class TokenFile:
    """Ids stored raw in a shard file, read window by window with ``os.pread``.

    Not a memory map: with the large page-cache folios of current kernels, every window a memory map touches
    maps megabytes of the file into the process (measured: 235 MB of resident memory for the 20 batches of a
    20-step run on a 288 MB shard). A read copies the window and maps nothing, so memory stays flat however
    large the corpus.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, length: int):
        self.path, self.dtype, self.length = str(path), np.dtype(dtype), length
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, count: int) -> np.ndarray:
        """ids[start:start + count] (clipped to the file), a fresh array."""
        count = max(0, min(count, self.length - start))
        size = self.dtype.itemsize
        data = os.pread(self._fd, count * size, int(start) * size)
        if len(data) != count * size:
            raise ValueError(f"shard {self.path} is shorter than its manifest says (truncated while in use?)")
        return np.frombuffer(data, dtype=self.dtype).copy()

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class TokenSplit:
    tokens: np.ndarray | TokenFile
    offsets: np.ndarray
    token_bytes: np.ndarray
    n_bytes: int

    def window(self, start: int, count: int) -> np.ndarray:
        """ids[start:start + count], int64."""
        if isinstance(self.tokens, TokenFile):
            return self.tokens.read(start, count).astype(np.int64)
        return self.tokens[start:start + count].astype(np.int64)

    def windows(self, starts: np.ndarray, count: int) -> np.ndarray:
        """ids[s:s + count] for every start s (each window inside the split), int64 [len(starts), count]."""
        if isinstance(self.tokens, TokenFile):
            return np.stack([self.tokens.read(s, count) for s in starts]).astype(np.int64) if len(starts) \
                else np.zeros((0, count), dtype=np.int64)
        return self.tokens[np.asarray(starts)[:, None] + np.arange(count)].astype(np.int64)

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
