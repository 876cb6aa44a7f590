"""Byte-level tokenizer: a token is one byte of the UTF-8 text, so the vocabulary is 256 and a model's loss
per token, divided by ln 2, is directly its bits per byte."""
from __future__ import annotations

import math

import torch


class ByteTokenizer:
    """text <-> byte ids. ``decode`` replaces invalid UTF-8 (a sampled byte sequence may cut a character)."""

    vocab_size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode("utf-8"))

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"byte ids must lie in [0, 256); got {bad[:5]}")
        return bytes(ids).decode("utf-8", errors="replace")


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Sum of negative log-likelihoods (natural log) over the bytes of a text -> bits per byte."""
    if n_bytes <= 0:
        raise ValueError(f"bits_per_byte needs a positive byte count, got {n_bytes}")
    return nll_nats / math.log(2) / n_bytes
