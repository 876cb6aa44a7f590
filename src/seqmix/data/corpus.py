"""Corpora: named documents (raw bytes) in train / validation / test splits.

``load_corpus(None)`` (or ``"shakespeare"``) is the vendored default; otherwise the source is a text file,
a directory (every non-hidden file below it) or a glob pattern. Every file must be non-empty UTF-8.

A user corpus is split by file when that is possible: files are ordered by the sha256 of their name and
taken for test, then validation, while each split stays under 10 % of the bytes, until each holds at least
5 %. When that leaves a split empty (few or very uneven files), every file is instead cut into its first
90 % (train), the next 5 % (validation) and the last 5 % (test), each cut moved to the next character.
"""
from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Callable

from seqmix.data import shakespeare
from seqmix.data.documents import SPLITS, Corpus, Document, char_boundary

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


def text_files(source: str) -> list[tuple[str, Path]]:
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


def split_plan(sizes: dict[str, int], cut: Callable[[str, int], int]) -> dict[str, list[tuple[str, int, int]]]:
    """Deterministic train / validation / test split of named files of given sizes, by file when possible (see
    the module docstring) -> split -> [(file name, start, end)] in file order. ``cut(name, offset)`` moves a
    90/5/5 cut to a character boundary of that file."""
    total = sum(sizes.values())
    held = {"test": [], "validation": []}
    train = []
    for name in sorted(sizes, key=lambda n: hashlib.sha256(n.encode()).hexdigest()):
        for split, names in held.items():
            size = sum(sizes[n] for n in names)
            if size < HELD_OUT_MIN * total and size + sizes[name] <= HELD_OUT_MAX * total:
                names.append(name)
                break
        else:
            train.append(name)
    order = {n: i for i, n in enumerate(sizes)}
    if held["test"] and held["validation"]:
        return {s: [(n, 0, sizes[n]) for n in sorted(names, key=order.get)]
                for s, names in (("train", train), ("validation", held["validation"]), ("test", held["test"]))}
    splits = {s: [] for s in SPLITS}
    for name, n in sizes.items():
        cuts = (0, cut(name, round(0.9 * n)), cut(name, round(0.95 * n)), n)
        for split, start, end in zip(SPLITS, cuts, cuts[1:]):
            if end > start:
                splits[split].append((name, start, end))
    return splits


def piece_name(name: str, start: int, end: int, size: int) -> str:
    """A document's name: its file's, with the byte range when it is a piece of the file."""
    return name if (start, end) == (0, size) else f"{name}[{start}:{end}]"


def split_documents(documents: list[Document]) -> dict[str, list[Document]]:
    """``split_plan`` applied to documents in memory."""
    data = {d.name: d.data for d in documents}
    plan = split_plan({n: len(b) for n, b in data.items()}, lambda n, offset: char_boundary(data[n], offset))
    return {s: [Document(piece_name(n, a, b, len(data[n])), data[n][a:b]) for n, a, b in pieces]
            for s, pieces in plan.items()}


def load_corpus(source: str | Path | None = None) -> Corpus:
    """The default Shakespeare corpus (``None`` or ``"shakespeare"``), or a file / directory / glob."""
    if source is None or (str(source) == "shakespeare" and not Path(source).exists()):
        return shakespeare.corpus()
    documents = [Document(name, read_text_file(path)) for name, path in text_files(str(source))]
    return Corpus(str(source), split_documents(documents))
