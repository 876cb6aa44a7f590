"""Tokenizers: bytes (the default), or a byte-level subword tokenizer of the Hugging Face ``tokenizers`` library.

A tokenizer is named by its *spec*: ``"bytes"``; ``"bpe:N"``, a byte-level BPE of N ids trained here on the
training split only (``train_bpe``); or the path of a ``tokenizer.json`` / of a transformers tokenizer
directory holding one. Every tokenizer seqmix uses is *byte-level*: each id stands for a fixed string of
bytes (``id_bytes``), and the ids of a text join back into exactly its bytes. That is what makes bits per byte
exact for every tokenizer: ``bpb = Σ NLL (nats) / (ln 2 · Σ bytes of the predicted tokens)``.

A tokenizer is saved as one ``tokenizer.json`` (the bytes tokenizer as ``{"seqmix_tokenizer": "bytes"}``);
its ``sha256`` is that file's, so a run, its checkpoints and its prepared shards can be checked to agree.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from seqmix.data.documents import char_boundary

TOKENIZER_FILE = "tokenizer.json"
BYTES_JSON = '{"seqmix_tokenizer": "bytes"}'
BPE_SPEC = re.compile(r"bpe:(\d+)")
# a byte-level BPE needs its 256 single-byte ids; larger than 2**20 ids is no vocabulary a model here can hold
BPE_MIN, BPE_MAX = 256, 1 << 20
PIECE_BYTES = 4096  # texts are encoded in pieces of about this size, cut after a newline (encode_bytes)
PROBE = "Byte-level? naïve café — 東京 🎭\n\tdef f(x):\r\n    return x  # ok\n\n"


class ByteTokenizer:
    """text <-> byte ids. ``decode`` replaces invalid UTF-8 (a sampled byte sequence may cut a character)."""

    vocab_size = 256
    name = "bytes"
    id_bytes = [bytes([i]) for i in range(256)]
    token_bytes = np.ones(256, dtype=np.int64)

    def encode(self, text: str | bytes) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode("utf-8"))

    def encode_bytes(self, data: bytes, start: int = 0) -> np.ndarray:
        """UTF-8 bytes -> ids, uint8 [len(data)]."""
        return np.frombuffer(data, dtype=np.uint8)

    def encode_many(self, texts: list[bytes], starts: list[int] | None = None) -> list[np.ndarray]:
        return [np.frombuffer(data, dtype=np.uint8) for data in texts]

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"byte ids must lie in [0, 256); got {bad[:5]}")
        return bytes(ids).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return BYTES_JSON

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE convention (GPT-2's): each byte is written as one printable character; bytes that
    are printable and not space map to themselves, the other 68 to chr(256), chr(257), ... in byte order.
    Returns character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class SubwordTokenizer:
    """A byte-level ``tokenizers.Tokenizer`` under a name (its spec). Refused, with the reason, when some
    id does not stand for fixed bytes or when encoding changes the text (a normalizer, an added prefix)."""

    def __init__(self, hf, name: str):
        self.hf, self.name = hf, name
        self._json = hf.to_str()
        vocab = hf.get_vocab(with_added_tokens=True)
        added = {i: t.content for i, t in hf.get_added_tokens_decoder().items()}
        self.vocab_size = max(vocab.values()) + 1
        alphabet = _byte_level_alphabet()
        self.id_bytes = [b""] * self.vocab_size
        for token, i in vocab.items():
            if i in added:
                self.id_bytes[i] = added[i].encode("utf-8")  # matched in the text as written
                continue
            if not all(c in alphabet for c in token):
                raise ValueError(f"tokenizer {name} is not byte-level: token {token!r} (id {i}) is not written in "
                                 "byte-level symbols, so its bytes are unknown and bits per byte cannot be exact; "
                                 "use bytes, bpe:N, or a byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen 2 style)")
            self.id_bytes[i] = bytes(alphabet[c] for c in token)
        self.token_bytes = np.array([len(b) for b in self.id_bytes], dtype=np.int64)
        ids = self.encode(PROBE)
        if b"".join(self.id_bytes[i] for i in ids) != PROBE.encode("utf-8"):
            raise ValueError(f"tokenizer {name} does not reproduce the bytes of the text it encodes (a normalizer, "
                             "an added prefix space or special tokens change it), so bits per byte cannot be exact; "
                             "use bytes, bpe:N, or a byte-level BPE tokenizer.json without a normalizer")

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_bytes(self, data: bytes, start: int = 0) -> np.ndarray:
        """UTF-8 bytes (``start`` bytes into their document) -> ids, uint32 [n]."""
        return self.encode_many([data], [start])[0]

    def encode_many(self, texts: list[bytes], starts: list[int] | None = None) -> list[np.ndarray]:
        """Several texts (UTF-8 bytes; text i begins ``starts[i]`` bytes into its document) -> their ids, each
        uint32 [n_i], encoded in pieces of about ``PIECE_BYTES`` (``piece_bounds``) by one ``encode_batch``."""
        starts = starts or [0] * len(texts)
        pieces, owner = [], []
        for i, (data, start) in enumerate(zip(texts, starts)):
            for a, b in piece_bounds(data, start):
                pieces.append(data[a:b].decode("utf-8"))
                owner.append(i)
        ids = [[] for _ in texts]
        for i, encoding in zip(owner, self.hf.encode_batch(pieces, add_special_tokens=False)):
            ids[i].append(np.asarray(encoding.ids, dtype=np.uint32))
        return [np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32) for parts in ids]

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids of {self.name} must lie in [0, {self.vocab_size}); got {bad[:5]}")
        return b"".join(self.id_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return self._json

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._json.encode()).hexdigest()


Tokenizer = ByteTokenizer | SubwordTokenizer


def piece_bounds(data: bytes, start: int = 0, size: int = PIECE_BYTES) -> list[tuple[int, int]]:
    """[a, b) ranges covering ``data``, the part of a document that begins ``start`` bytes into it.

    The document is cut, for every k >= 1, after the first newline in its bytes [k·size − 1, (k+1)·size − 1),
    or, with none there, at the first character boundary at or after k·size. Each cut depends only on the
    bytes near it, so any part of a document that begins and ends at cuts is cut as the whole document is:
    a document tokenized in parts (``seqmix prepare``'s units) gives the ids of the whole.
    """
    n, cuts = len(data), [0]
    k = start // size + 1
    while k * size - start < n:
        lo = k * size - 1 - start
        newline = data.find(b"\n", lo, lo + size)
        cut = newline + 1 if newline >= 0 else char_boundary(data, k * size - start)
        if cut >= n:
            break
        cuts.append(cut)
        k += 1
    cuts.append(n)
    return list(zip(cuts, cuts[1:]))


def _need_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("subword tokenizers need the Hugging Face tokenizers library: pip install "
                          "'seqmix[tokenizers]'") from None
    return tokenizers


def check_spec(spec: str) -> None:
    """Raise a ValueError naming what is allowed when ``spec`` is no tokenizer spec (a path is checked on use)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"tokenizer {spec!r}: give 'bytes', 'bpe:N' or the path of a tokenizer.json")
    match = BPE_SPEC.fullmatch(spec)
    if spec.startswith("bpe:") and (match is None or not BPE_MIN <= int(match[1]) <= BPE_MAX):
        raise ValueError(f"tokenizer {spec!r}: bpe:N needs a whole number N of ids in [{BPE_MIN}, {BPE_MAX}]")


def bpe_size(spec: str) -> int | None:
    """N of ``bpe:N``, else None."""
    match = BPE_SPEC.fullmatch(spec)
    return int(match[1]) if match else None


def train_bpe(texts: Iterable[bytes], vocab_size: int, name: str | None = None) -> SubwordTokenizer:
    """A byte-level BPE of ``vocab_size`` ids (fewer if the text runs out of pairs to merge) trained on
    ``texts`` (UTF-8 bytes, e.g. the documents of a training split), in pieces cut as ``encode_bytes`` cuts
    them. The 256 byte symbols come first, so every text is encodable."""
    tokenizers = _need_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    pieces = (data[a:b].decode("utf-8") for data in texts for a, b in piece_bounds(data))
    hf.train_from_iterator(pieces, trainer)
    return SubwordTokenizer(hf, name or f"bpe:{vocab_size}")


def from_json(text: str, name: str) -> Tokenizer:
    """A tokenizer from the text of its ``tokenizer.json`` (as ``to_json`` writes it), under ``name``."""
    if text.strip() == BYTES_JSON:
        return ByteTokenizer()
    tokenizers = _need_tokenizers()
    try:
        hf = tokenizers.Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises its own Exception type for a malformed file
        raise ValueError(f"tokenizer {name}: not a valid tokenizer.json ({err})") from None
    return SubwordTokenizer(hf, name)


def load_tokenizer_file(path: str | Path) -> Tokenizer:
    """A tokenizer from a ``tokenizer.json`` or a directory holding one (a transformers tokenizer directory),
    named by the path as given."""
    p = Path(path)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        where = f"{p} has no {TOKENIZER_FILE} (save a fast tokenizer with save_pretrained)" if p.is_dir() else \
            f"{p}: no such file"
        raise FileNotFoundError(f"tokenizer {path}: {where}; allowed: 'bytes', 'bpe:N', or a tokenizer.json")
    return from_json(file.read_text(encoding="utf-8"), str(path))


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write ``directory/tokenizer.json`` and return its path."""
    path = Path(directory) / TOKENIZER_FILE
    path.write_text(tokenizer.to_json(), encoding="utf-8")
    return path


def check_same(expected_name: str, expected_sha256: str, tokenizer: Tokenizer, what: str) -> None:
    """Refuse ``tokenizer`` unless it is the one named and hashed (``what`` says whose it is)."""
    if tokenizer.name != expected_name or tokenizer.sha256 != expected_sha256:
        raise ValueError(f"tokenizer mismatch: {what} uses tokenizer {expected_name!r} (sha256 {expected_sha256[:12]}…), "
                         f"not {tokenizer.name!r} (sha256 {tokenizer.sha256[:12]}…); use the same tokenizer")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type of a shard that holds every id: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Sum of negative log-likelihoods (natural log) over the tokens of a text -> bits per byte of that text."""
    if n_bytes <= 0:
        raise ValueError(f"bits_per_byte needs a positive byte count, got {n_bytes}")
    return nll_nats / math.log(2) / n_bytes


def tokenizer_record(tokenizer: Tokenizer) -> dict:
    """What reports and manifests record of a tokenizer."""
    return {"name": tokenizer.name, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size}


def resolve_tokenizer(spec: str, training_texts: Callable[[], Iterable[bytes]], saved: Path | None = None) -> Tokenizer:
    """The tokenizer a spec names: ``saved`` (a tokenizer.json written earlier for this spec, in a run or
    shard directory) when it exists, else bytes, a BPE trained on ``training_texts()``, or a tokenizer file."""
    check_spec(spec)
    if saved is not None and saved.is_file():
        return from_json(saved.read_text(encoding="utf-8"), spec)
    if spec == "bytes":
        return ByteTokenizer()
    size = bpe_size(spec)
    if size is not None:
        return train_bpe(training_texts(), size, spec)
    return load_tokenizer_file(spec)
