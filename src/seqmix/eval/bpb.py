"""Bits per byte and loss by position, over windows that tile each document.

A document of n tokens is cut into windows of ``seq_len`` inputs whose targets are the next tokens:
window j predicts tokens ``j·seq_len + 1 ... (j+1)·seq_len``, each from the tokens of its own window
before it. So every token but a document's first is predicted exactly once, and, whatever the tokenizer,
``bpb = Σ NLL / ln 2 / Σ bytes of the predicted tokens`` (a byte-level tokenizer's ids stand for fixed
bytes, ``token_bytes``). Each window starts from the zero state.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from seqmix.data.documents import Document
from seqmix.data.tokens import TokenSplit


def _as_token_split(data) -> TokenSplit:
    if isinstance(data, TokenSplit):
        return data
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray)):
        return TokenSplit.from_documents([Document("text", bytes(data))])
    docs = list(data)
    if not all(isinstance(d, Document) for d in docs):
        raise ValueError("evaluate: data must be a str, bytes, a list of seqmix.data.Document or a TokenSplit")
    return TokenSplit.from_documents(docs)


def _window_starts(split: TokenSplit, seq_len: int) -> np.ndarray:
    """Start (in ``split.tokens``) of every window of every document of two or more tokens, int64 [W]."""
    lengths = split.lengths
    per_doc = np.where(lengths >= 2, -(-(lengths - 1) // seq_len), 0)
    first = np.repeat(split.offsets[:-1], per_doc)
    within = np.arange(int(per_doc.sum())) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
    return first + within * seq_len


def log2_buckets(loss_by_position: list[float]) -> list[dict]:
    """Mean of per-position values over positions [0, 1), [1, 2), [2, 4), [4, 8), ... (0-based)."""
    edges = [0] + [2 ** i for i in range(int(math.log2(max(len(loss_by_position), 1))) + 1)]
    edges = sorted({min(e, len(loss_by_position)) for e in edges} | {len(loss_by_position)})
    return [{"start": a, "end": b, "bpb": float(np.mean(loss_by_position[a:b]))} for a, b in zip(edges, edges[1:])]


@torch.inference_mode()  # what leaves is Python numbers; inference mode skips view and version tracking
def evaluate(model, data, seq_len: int, *, batch_size: int = 16, max_bytes: int | None = None) -> dict:
    """Bits per byte of ``model`` on ``data`` (a str, bytes or list of Documents, read as bytes; or a
    TokenSplit, tokenized by any byte-level tokenizer) with windows of ``seq_len`` tokens.

    ``max_bytes`` evaluates an evenly spaced subset of the windows holding about that many bytes of text
    (windows of ``seq_len`` tokens of the split's mean size in bytes); only those windows are read.
    Returns ``bpb``, ``nll_nats`` (sum), ``bytes`` (of the predicted tokens), ``tokens`` (predicted),
    ``windows``, ``seq_len``, and ``loss_by_position``: the bits per byte at each position of the full-length
    windows (position t has t + 1 tokens of context), with its ``log2_buckets`` (empty when no window is full
    length).
    """
    if seq_len < 1:
        raise ValueError(f"evaluate: seq_len={seq_len} must be positive")
    split = _as_token_split(data)
    starts = _window_starts(split, seq_len)
    if not len(starts):
        raise ValueError("evaluate: the data has no document of two or more tokens")
    if max_bytes is not None and max_bytes < split.n_bytes:
        bytes_per_token = split.n_bytes / max(int(split.offsets[-1]), 1)
        keep = max(1, min(len(starts), math.ceil(max_bytes / (seq_len * bytes_per_token))))
        starts = starts[np.linspace(0, len(starts) - 1, keep).round().astype(int)]
    ends = np.minimum(starts + seq_len + 1, split.offsets[1:][np.searchsorted(split.offsets[1:], starts, side="right")])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    full = np.flatnonzero(ends - starts == seq_len + 1)
    partial = np.flatnonzero(ends - starts < seq_len + 1)
    nll_total, n_bytes, n_tokens = 0.0, 0, 0
    by_position = torch.zeros(seq_len, dtype=torch.float64)
    bytes_by_position = np.zeros(seq_len, dtype=np.int64)
    for i in range(0, len(full), batch_size):
        rows = starts[full[i:i + batch_size]]
        window = split.windows(rows, seq_len + 1)
        target_bytes = split.token_bytes[window[:, 1:]]
        nll = _nll(model, torch.from_numpy(window).to(device)).cpu()
        nll_total += nll.sum().item()
        by_position += nll.sum(0)
        bytes_by_position += target_bytes.sum(0)
        n_bytes += int(target_bytes.sum())
        n_tokens += target_bytes.size
    for w in partial:
        window = split.window(starts[w], ends[w] - starts[w])
        nll_total += _nll(model, torch.from_numpy(window)[None].to(device)).sum().item()
        n_bytes += int(split.token_bytes[window[1:]].sum())
        n_tokens += len(window) - 1
    model.train(was_training)
    loss_by_position = (by_position / math.log(2) / torch.from_numpy(bytes_by_position)).tolist() if len(full) else []
    return {"bpb": nll_total / math.log(2) / n_bytes, "nll_nats": nll_total, "bytes": n_bytes, "tokens": n_tokens,
            "windows": len(starts), "seq_len": seq_len, "loss_by_position": loss_by_position,
            "loss_by_position_buckets": log2_buckets(loss_by_position) if len(full) else []}


def _nll(model, window: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood (nats, float64) of window[:, 1:] given window[:, :-1]."""
    logits = model(window[:, :-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: softmax in float32
    return F.cross_entropy(logits.transpose(1, 2), window[:, 1:], reduction="none").double()
