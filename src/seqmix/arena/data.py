"""The arena's language-modelling data: the vendored Shakespeare in bytes, or any corpus and tokenizer."""
from __future__ import annotations

from pathlib import Path

from seqmix.data.prepare import open_corpus, shakespeare_sha256

DEFAULT_DATA = {"corpus": None, "name": "shakespeare", "tokenizer": "bytes", "vocab_size": 256}


def describe_data(corpus: str | None, tokenizer: str, out: Path) -> dict:
    """Prepare ``corpus`` with ``tokenizer`` once, into ``<out>/data`` (shards are used as they are), and
    describe it for the cells and the report: what the cells train on (``corpus``: shards, or None for
    Shakespeare), ``name``, ``sha256`` of the source, the tokenizer's name, sha256, ids and its json."""
    tokens = open_corpus(corpus, tokenizer, out, quiet=False)
    shards = tokens.info.get("shards")
    return {"corpus": shards, "name": str(corpus) if corpus else "shakespeare",
            "sha256": tokens.sha256 or shakespeare_sha256(), "tokenizer": tokens.tokenizer.name,
            "tokenizer_sha256": tokens.tokenizer.sha256, "vocab_size": tokens.tokenizer.vocab_size,
            "tokenizer_json": tokens.tokenizer.to_json()}
