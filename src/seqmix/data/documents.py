"""The plain types every data module shares: a named document of raw bytes, and a corpus of split documents.

This module imports nothing from seqmix, so the corpus sources (``corpus``, ``shakespeare``), the samplers
and evaluation can all depend on it without depending on each other.
"""
from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes


@dataclass
class Corpus:
    name: str
    splits: dict[str, list[Document]]

    def __getitem__(self, split: str) -> list[Document]:
        if split not in self.splits:
            raise ValueError(f"corpus split {split!r}: choose one of {list(self.splits)}")
        return self.splits[split]

    def summary(self) -> dict:
        """Bytes and document names of every split."""
        return {split: {"bytes": sum(len(d.data) for d in docs), "documents": [d.name for d in docs]}
                for split, docs in self.splits.items()}


def char_boundary(data: bytes, offset: int) -> int:
    """The first offset at or after ``offset`` that does not cut a UTF-8 character of ``data``."""
    while offset < len(data) and data[offset] & 0xC0 == 0x80:
        offset += 1
    return offset
