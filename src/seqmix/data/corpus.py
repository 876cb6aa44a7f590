"""Corpora: named documents (raw bytes) in train / validation / test splits.

``load_corpus(None)`` (or ``"shakespeare"``) is the vendored default; otherwise the source is a text file,
a directory (every non-hidden file below it) or a glob pattern. Every file must be non-empty UTF-8.

A user corpus is split by file when that is possible: files are ordered by the sha256 of their name and
taken for test, then validation, while each split stays under 10 % of the bytes, until each holds at least
5 %. When that leaves a split empty (few or very uneven files), every file is instead cut into its first
90 % (train), the next 5 % (validation) and the last 5 % (test).
"""
from __future__ import annotations

import glob
import hashlib
from pathlib import Path

from seqmix.data import shakespeare
from seqmix.data.documents import SPLITS, Corpus, Document

HELD_OUT_MIN, HELD_OUT_MAX = 0.05, 0.10


def read_text_file(path: Path) -> bytes:
    """The bytes of a corpus file, refused with a ValueError naming it when empty or not UTF-8."""
    data = path.read_bytes()
    if not data:
        raise ValueError(f"corpus file {path} is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {path} is not UTF-8 text (invalid byte 0x{data[err.start]:02x} "
                         f"at offset {err.start})") from None
    return data


def _files(source: str) -> list[tuple[str, Path]]:
    """(document name, path) of every file a source names, sorted by name."""
    path = Path(source)
    if path.is_file():
        return [(path.name, path)]
    if path.is_dir():
        files = [p for p in path.rglob("*")
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not files:
            raise FileNotFoundError(f"corpus directory {source} has no files")
        return sorted((p.relative_to(path).as_posix(), p) for p in files)
    matches = sorted(Path(m) for m in glob.glob(source, recursive=True) if Path(m).is_file())
    if not matches:
        raise FileNotFoundError(f"corpus {source!r}: no such file or directory, and no file matches it as a glob")
    return [(m.as_posix(), m) for m in matches]


def split_documents(documents: list[Document]) -> dict[str, list[Document]]:
    """Deterministic train / validation / test split, by document when possible (see the module docstring)."""
    total = sum(len(d.data) for d in documents)
    held = {"test": [], "validation": []}
    train = []
    for doc in sorted(documents, key=lambda d: hashlib.sha256(d.name.encode()).hexdigest()):
        for split, docs in held.items():
            size = sum(len(d.data) for d in docs)
            if size < HELD_OUT_MIN * total and size + len(doc.data) <= HELD_OUT_MAX * total:
                docs.append(doc)
                break
        else:
            train.append(doc)
    if held["test"] and held["validation"]:
        order = {d.name: i for i, d in enumerate(documents)}
        return {s: sorted(docs, key=lambda d: order[d.name])
                for s, docs in (("train", train), ("validation", held["validation"]), ("test", held["test"]))}
    splits = {s: [] for s in SPLITS}
    for doc in documents:
        n = len(doc.data)
        cuts = (0, round(0.9 * n), round(0.95 * n), n)
        for split, start, end in zip(SPLITS, cuts, cuts[1:]):
            if end > start:
                splits[split].append(Document(f"{doc.name}[{start}:{end}]", doc.data[start:end]))
    return splits


def load_corpus(source: str | Path | None = None) -> Corpus:
    """The default Shakespeare corpus (``None`` or ``"shakespeare"``), or a file / directory / glob."""
    if source is None or (str(source) == "shakespeare" and not Path(source).exists()):
        return shakespeare.corpus()
    documents = [Document(name, read_text_file(path)) for name, path in _files(str(source))]
    return Corpus(str(source), split_documents(documents))
