"""Argument types shared by several subcommands."""
from __future__ import annotations

import argparse


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


def tokenizer_vocab_size(spec: str) -> int:
    """The ids a tokenizer spec gives a model: 256 for bytes, N for bpe:N, the file's count for a path."""
    from seqmix.data.tokenizer import ByteTokenizer, bpe_size, check_spec, load_tokenizer_file

    check_spec(spec)
    if spec == "bytes":
        return ByteTokenizer.vocab_size
    return bpe_size(spec) or load_tokenizer_file(spec).vocab_size
