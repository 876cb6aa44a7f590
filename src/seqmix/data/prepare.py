"""A corpus and a tokenizer spec -> the TokenCorpus that training, evaluation and the arena read.

* a shard directory (``seqmix prepare``'s output): read from its files on demand; its tokenizer must be the one asked for;
* the vendored Shakespeare (``None``) with bytes: tokenized in memory (5 MB);
* any other source: prepared into shards behind the scenes (in ``<run>/data`` when there is a run directory,
  else in a temporary directory read into memory), then read as above.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from seqmix.data import shakespeare
from seqmix.data.shards import is_prepared, open_shards, prepare
from seqmix.data.tokenizer import TOKENIZER_FILE, Tokenizer, bpe_size, check_same, resolve_tokenizer
from seqmix.data.tokens import TokenCorpus

RUN_DATA = "data"  # <run>/data: the shards a run prepared from a plain --corpus


def shakespeare_sha256() -> str:
    """The vendored corpus's identity: the sha256 of its texts' names and hashes."""
    digest = hashlib.sha256()
    for name, data in sorted(shakespeare.load_texts().items()):
        digest.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


def _shakespeare(tokenizer: str, saved: Path | None) -> TokenCorpus:
    corpus = shakespeare.corpus()
    tok = resolve_tokenizer(tokenizer, lambda: (d.data for d in corpus["train"]), saved)
    tokens = TokenCorpus.from_corpus(corpus, tok)
    tokens.sha256 = shakespeare_sha256()
    return tokens


def _check_tokenizer(corpus: TokenCorpus, tokenizer: str, where: str) -> None:
    """Refuse shards made with another tokenizer than the one named (a file must also be unchanged)."""
    if corpus.tokenizer.name != tokenizer:
        raise ValueError(f"tokenizer mismatch: {where} was prepared with tokenizer {corpus.tokenizer.name!r}, not "
                         f"{tokenizer!r}; use --tokenizer {corpus.tokenizer.name}")
    if tokenizer != "bytes" and bpe_size(tokenizer) is None:
        check_same(corpus.tokenizer.name, corpus.tokenizer.sha256, resolve_tokenizer(tokenizer, lambda: ()), where)


def is_vendored(source: str | None) -> bool:
    return source is None or (str(source) == "shakespeare" and not Path(source).exists())


def open_corpus(source: str | None, tokenizer: str = "bytes", run_dir: Path | None = None, *,
                quiet: bool = True) -> TokenCorpus:
    """``source`` tokenized by ``tokenizer`` (a spec), as the module docstring says. With ``run_dir``, the
    tokenizer is kept in ``run_dir/tokenizer.json`` and a plain source's shards in ``run_dir/data``."""
    saved = run_dir / TOKENIZER_FILE if run_dir is not None else None
    if is_prepared(source):
        corpus = open_shards(source)
        _check_tokenizer(corpus, tokenizer, f"corpus {source}")
    elif is_vendored(source) and tokenizer == "bytes":
        corpus = _shakespeare(tokenizer, None)
    elif is_vendored(source):
        corpus = _shakespeare(tokenizer, saved)
    elif run_dir is not None:
        prepare(source, tokenizer, run_dir / RUN_DATA, quiet=quiet)
        corpus = open_shards(run_dir / RUN_DATA)
    else:
        corpus = _prepared_in_memory(source, tokenizer)
    if saved is not None and not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(corpus.tokenizer.to_json(), encoding="utf-8")
    return corpus


def tokenize_for(source: str | None, tokenizer: Tokenizer, run_dir: Path | None = None) -> TokenCorpus:
    """``source`` read with a given tokenizer (a checkpoint's, for evaluation): shards (refused unless made
    with that tokenizer), the run's own shards of that source, or the source tokenized now."""
    where = source
    if not is_prepared(source) and run_dir is not None and is_prepared(run_dir / RUN_DATA) and not is_vendored(source):
        where = run_dir / RUN_DATA
    if is_prepared(where):
        corpus = open_shards(where)
        check_same(corpus.tokenizer.name, corpus.tokenizer.sha256, tokenizer, f"corpus {where}")
        return corpus
    if is_vendored(source):
        corpus = TokenCorpus.from_corpus(shakespeare.corpus(), tokenizer)
        corpus.sha256 = shakespeare_sha256()
        return corpus
    return _prepared_in_memory(source, tokenizer)


def _prepared_in_memory(source: str, tokenizer: str | Tokenizer) -> TokenCorpus:
    """Shards prepared in a temporary directory, read into memory."""
    with tempfile.TemporaryDirectory(prefix="seqmix-prepare-") as tmp:
        prepare(source, tokenizer, Path(tmp) / RUN_DATA, quiet=True)
        corpus = open_shards(Path(tmp) / RUN_DATA)
        for split in corpus.splits.values():  # read into memory before the files go
            split.tokens, split.offsets = split.tokens.read(0, len(split.tokens)), np.array(split.offsets)
    return corpus
