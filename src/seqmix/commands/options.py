"""Argument types shared by several subcommands."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def byte_budget(text: str) -> int | None:
    """``--eval-bytes``: a positive number of bytes, or ``all`` (None: the whole split)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of bytes, or 'all' for the whole split")
    return value


def tokenizer_vocab_size(spec: str, corpus: str | None = None) -> int:
    """The ids a tokenizer spec gives a model: 256 for bytes, N for bpe:N, the file's count for a path, the
    shards' count when ``corpus`` is a shard directory made with that tokenizer."""
    from seqmix.data.shards import MANIFEST, is_prepared
    from seqmix.data.tokenizer import ByteTokenizer, bpe_size, check_spec, load_tokenizer_file

    check_spec(spec)
    if is_prepared(corpus):
        recorded = json.loads((Path(corpus) / MANIFEST).read_text(encoding="utf-8"))["tokenizer"]
        if recorded["name"] == spec:
            return recorded["vocab_size"]
    if spec == "bytes":
        return ByteTokenizer.vocab_size
    return bpe_size(spec) or load_tokenizer_file(spec).vocab_size
