"""A corpus and a tokenizer spec -> the TokenCorpus that training, evaluation and the arena read."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from seqmix.data.corpus import load_corpus
from seqmix.data.tokenizer import (TOKENIZER_FILE, ByteTokenizer, Tokenizer, bpe_size, check_spec, from_json,
                                   load_tokenizer_file, train_bpe)
from seqmix.data.tokens import TokenCorpus


def resolve_tokenizer(spec: str, training_texts: Callable[[], Iterable[bytes]],
                      saved: Path | None = None) -> Tokenizer:
    """The tokenizer a spec names: ``saved`` (a tokenizer.json written earlier for this spec, e.g. in a run
    directory) when it exists, else bytes, a BPE trained on ``training_texts()``, or a tokenizer file."""
    check_spec(spec)
    if saved is not None and saved.is_file():
        return from_json(saved.read_text(encoding="utf-8"), spec)
    if spec == "bytes":
        return ByteTokenizer()
    size = bpe_size(spec)
    if size is not None:
        return train_bpe(training_texts(), size, spec)
    return load_tokenizer_file(spec)


def open_corpus(source: str | None, tokenizer: str = "bytes", run_dir: Path | None = None) -> TokenCorpus:
    """``source`` (None: Shakespeare; a file, directory or glob) tokenized by ``tokenizer`` (a spec); with
    ``run_dir``, the tokenizer is kept in (and on later calls read from) ``run_dir/tokenizer.json``."""
    corpus = load_corpus(source)
    saved = run_dir / TOKENIZER_FILE if run_dir is not None else None
    tok = resolve_tokenizer(tokenizer, lambda: (d.data for d in corpus["train"]), saved)
    if saved is not None and not saved.exists():
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(tok.to_json(), encoding="utf-8")
    return TokenCorpus.from_corpus(corpus, tok)


def tokenize_for(source: str | None, tokenizer: Tokenizer) -> TokenCorpus:
    """``source`` tokenized by a given tokenizer (a checkpoint's, for evaluation)."""
    return TokenCorpus.from_corpus(load_corpus(source), tokenizer)
