"""What ``seqmix prepare`` reads: a source cut into *units* of work, each read on its own by a worker.

A source is what ``--corpus`` names (a file, a directory, a glob); each file is read by its extension:

* ``.jsonl``: one JSON object per line, its text in the field ``text_field``; each record is a document;
* ``.parquet`` (needs pyarrow): one document per row, its text in the string column ``text_field``;
* anything else: UTF-8 text, one document per file.

Records (JSONL lines, Parquet rows) go to test when ``crc32(file name, position) mod 100 < 5``, validation
when it is < 10, train otherwise. Text files are split as ``corpus.split_plan`` splits them, by file or
90/5/5 inside each. A text piece larger than ``UNIT_BYTES`` is cut into units at the cuts
``tokenizer.piece_bounds`` would make, so a document tokenized in units gives the ids of the whole.

Small text files share a unit. A unit is a JSON-able dict; ``read_unit`` returns its documents as ``(split, text bytes, start within the
document, continues the previous unit's last document)``.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

from seqmix.data.corpus import split_plan, text_files
from seqmix.data.documents import char_boundary
from seqmix.data.tokenizer import PIECE_BYTES

UNIT_BYTES = 8 << 20  # about this many bytes of source per unit of work (a multiple of PIECE_BYTES)
HELD_OUT_PERCENT = {"test": 5, "validation": 10}  # record splits: crc32 mod 100 below 5, below 10
TEXT_TYPES = ("string", "large_string", "string_view")


def file_kind(path: Path) -> str:
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(path.suffix.lower(), "text")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(source: str, text_field: str) -> dict:
    """What identifies a source: its files (name, kind, size, sha256), their combined ``sha256`` (of every
    name and file hash, and of ``text_field`` when a file has records) and total ``bytes``."""
    files = []
    for name, path in text_files(source):
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"corpus file {path} is empty")
        files.append({"name": name, "path": str(path), "kind": file_kind(path), "bytes": size,
                      "sha256": sha256_file(path)})
    records = any(f["kind"] != "text" for f in files)
    digest = hashlib.sha256(f"text_field={text_field}\n".encode() if records else b"")
    for f in files:
        digest.update(f"{f['name']}\0{f['sha256']}\n".encode())
    return {"spec": source, "files": files, "text_field": text_field if records else None,
            "sha256": digest.hexdigest(), "bytes": sum(f["bytes"] for f in files)}


def _read(path: str, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def _document_cut(path: str, piece_start: int, piece_end: int, k: int) -> int:
    """The k-th piece cut (``tokenizer.piece_bounds``) of the document that is file[piece_start:piece_end],
    as a file offset."""
    lo = k * PIECE_BYTES - 1
    window = _read(path, piece_start + lo, PIECE_BYTES + 4)[:max(0, piece_end - piece_start - lo)]
    newline = window.find(b"\n", 0, PIECE_BYTES)
    if newline >= 0:
        return piece_start + lo + newline + 1
    return piece_start + lo + char_boundary(window, 1)


def _next_line(path: str, offset: int, size: int) -> int:
    """The offset just after the first newline at or after ``offset`` (or the file's end)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while offset < size:
            block = f.read(1 << 16)
            newline = block.find(b"\n")
            if newline >= 0:
                return offset + newline + 1
            offset += len(block)
    return size


def _check_records(f: dict, text_field: str) -> None:
    """Refuse, before any work starts, a record file whose text field is missing or not text."""
    if f["kind"] == "jsonl":
        first = _read(f["path"], 0, _next_line(f["path"], 0, f["bytes"])).strip()
        if first:  # (blank lines are skipped; the workers check every record)
            _record_text(first, text_field, f["path"], 0)
        return
    schema = _parquet(f["path"]).schema_arrow
    if text_field not in schema.names:
        raise ValueError(f"{f['path']}: no column {text_field!r} (columns: {', '.join(schema.names)}); name the "
                         "text column with --text-field")
    kind = str(schema.field(text_field).type)
    if kind not in TEXT_TYPES:
        raise ValueError(f"{f['path']}: column {text_field!r} has type {kind}; the text column must be of type "
                         f"{' or '.join(TEXT_TYPES)}")


def _parquet(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow: pip install 'seqmix[parquet]'") from None
    return pq.ParquetFile(path)


def plan_units(description: dict) -> list[dict]:
    """The units of work of a described source, in the order their tokens are stored."""
    files = {f["name"]: f for f in description["files"]}
    units = []
    text = {n: f for n, f in files.items() if f["kind"] == "text"}
    if text:
        plan = split_plan({n: f["bytes"] for n, f in text.items()},
                          lambda n, offset: offset + char_boundary(_read(text[n]["path"], offset, 4), 0))
        pieces = []  # [path, split, start, end, start within the document, continues the previous piece]
        for split, spans in plan.items():
            for name, start, end in spans:
                path = text[name]["path"]
                per_unit = UNIT_BYTES // PIECE_BYTES
                cuts = [start] + [_document_cut(path, start, end, k)
                                  for k in range(per_unit, (end - start) // PIECE_BYTES + 1, per_unit)]
                cuts = sorted({c for c in cuts if start <= c < end}) + [end]
                pieces += [[path, split, a, b, a - start, i > 0] for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
        group: list = []
        for piece in pieces:  # small files share a unit; a piece of a large one fills a unit alone
            if group and (piece[5] or sum(q[3] - q[2] for q in group) + piece[3] - piece[2] > UNIT_BYTES):
                units.append({"kind": "text", "pieces": group, "bytes": sum(q[3] - q[2] for q in group)})
                group = []
            group.append(piece)
        if group:
            units.append({"kind": "text", "pieces": group, "bytes": sum(q[3] - q[2] for q in group)})
    for name, f in files.items():
        if f["kind"] == "text":
            continue
        _check_records(f, description["text_field"])
        if f["kind"] == "jsonl":
            start = 0
            while start < f["bytes"]:
                end = _next_line(f["path"], min(start + UNIT_BYTES, f["bytes"]) - 1, f["bytes"])
                units.append({"kind": "jsonl", "path": f["path"], "name": name, "start": start, "end": end,
                              "bytes": end - start})
                start = end
        else:
            metadata = _parquet(f["path"]).metadata
            for group in range(metadata.num_row_groups):
                units.append({"kind": "parquet", "path": f["path"], "name": name, "row_group": group,
                              "bytes": metadata.row_group(group).total_byte_size})
    return units


def record_split(name: str, position: int) -> str:
    bucket = zlib.crc32(f"{name}:{position}".encode()) % 100
    return "test" if bucket < HELD_OUT_PERCENT["test"] else "validation" if bucket < HELD_OUT_PERCENT["validation"] \
        else "train"


def _record_text(line: bytes, text_field: str, path: str, offset: int) -> bytes:
    def where() -> str:  # only on error: count the lines before the record
        line_number = _read(path, 0, offset).count(b"\n") + 1
        return f"{path} line {line_number}"

    try:
        record = json.loads(line)
    except ValueError as err:
        raise ValueError(f"{where()}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where()}: a JSONL record must be a JSON object, got {type(record).__name__}")
    if text_field not in record:
        raise ValueError(f"{where()}: no field {text_field!r} (fields: {', '.join(map(str, record)) or 'none'}); "
                         "name the text field with --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{where()}: field {text_field!r} is {type(text).__name__}, not a string")
    return text.encode("utf-8")


def read_unit(unit: dict, text_field: str | None) -> list[tuple[str, bytes, int, bool]]:
    """The documents of a unit: (split, UTF-8 bytes, start within the document, continues the previous unit's
    last document). Refuses text that is not UTF-8 and records without the text field, naming the place."""
    if unit["kind"] == "text":
        out = []
        for path, split, start, end, doc_start, continues in unit["pieces"]:
            data = _read(path, start, end - start)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"corpus file {path} is not UTF-8 text (invalid byte 0x{data[err.start]:02x} at "
                                 f"offset {start + err.start})") from None
            out.append((split, data, doc_start, continues))
        return out
    out = []
    if unit["kind"] == "jsonl":
        data = _read(unit["path"], unit["start"], unit["end"] - unit["start"])
        offset = unit["start"]
        for line in data.split(b"\n"):
            if line.strip():
                text = _record_text(line, text_field, unit["path"], offset)
                if text:
                    out.append((record_split(unit["name"], offset), text, 0, False))
            offset += len(line) + 1
        return out
    column = _parquet(unit["path"]).read_row_group(unit["row_group"], columns=[text_field]).column(0)
    for row, text in enumerate(column.to_pylist()):
        if text:  # a null or empty row holds no document
            out.append((record_split(unit["name"], unit["row_group"] << 32 | row), text.encode("utf-8"), 0, False))
    return out


def training_sample(units: list[dict], text_field: str | None, limit: int) -> list[bytes]:
    """About ``limit`` bytes of the source's training split (or all of it), spread over every unit (the start
    of each), for training a BPE."""
    share = min(1.0, limit / max(sum(u["bytes"] for u in units), 1))
    texts = []
    for unit in units:
        budget = share * unit["bytes"]
        for split, data, _, _ in read_unit(unit, text_field):
            if split == "train" and budget > 0:
                cut = len(data) if budget >= len(data) else data.find(b"\n", int(budget)) + 1 or len(data)
                texts.append(data[:char_boundary(data, cut)])
                budget -= cut
    return texts
