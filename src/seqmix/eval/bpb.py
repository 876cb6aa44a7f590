"""Bits per byte and loss by position, over windows that tile each document.

A document of n bytes is cut into windows of ``seq_len`` inputs whose targets are the next bytes:
window j predicts bytes ``j·seq_len + 1 ... (j+1)·seq_len``, each from the bytes of its own window
before it. So every byte but a document's first is predicted exactly once, and
``bpb = Σ NLL / ln 2 / #predicted bytes``. Each window starts from the zero state.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from seqmix.data.documents import Document


def _as_documents(data) -> list[Document]:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray)):
        return [Document("text", bytes(data))]
    docs = list(data)
    if not all(isinstance(d, Document) for d in docs):
        raise ValueError("evaluate: data must be a str, bytes, or a list of seqmix.data.Document")
    return docs


def _windows(documents: list[Document], seq_len: int) -> list[np.ndarray]:
    """Every window of up to seq_len + 1 bytes (inputs plus the byte after them) of every document."""
    out = []
    for doc in documents:
        arr = np.frombuffer(doc.data, dtype=np.uint8)
        for start in range(0, len(arr) - 1, seq_len):
            out.append(arr[start:start + seq_len + 1])
    return out


def log2_buckets(loss_by_position: list[float]) -> list[dict]:
    """Mean of per-position values over positions [0, 1), [1, 2), [2, 4), [4, 8), ... (0-based)."""
    edges = [0] + [2 ** i for i in range(int(math.log2(max(len(loss_by_position), 1))) + 1)]
    edges = sorted({min(e, len(loss_by_position)) for e in edges} | {len(loss_by_position)})
    return [{"start": a, "end": b, "bpb": float(np.mean(loss_by_position[a:b]))} for a, b in zip(edges, edges[1:])]


@torch.inference_mode()  # what leaves is Python numbers; inference mode skips view and version tracking
def evaluate(model, data, seq_len: int, *, batch_size: int = 16, max_bytes: int | None = None) -> dict:
    """Bits per byte of ``model`` on ``data`` (a str, bytes or list of Documents) with windows of ``seq_len``.

    ``max_bytes`` evaluates an evenly spaced subset of the windows holding about that many predicted bytes.
    Returns ``bpb``, ``nll_nats`` (sum), ``bytes``, ``windows``, ``seq_len``, and ``loss_by_position``:
    the bits per byte at each position of the full-length windows (position t has t + 1 bytes of context),
    with its ``log2_buckets`` (empty when no window is full length).
    """
    if seq_len < 1:
        raise ValueError(f"evaluate: seq_len={seq_len} must be positive")
    windows = _windows(_as_documents(data), seq_len)
    if not windows:
        raise ValueError("evaluate: the data has no document of two or more bytes")
    if max_bytes is not None and max_bytes < sum(len(w) - 1 for w in windows):
        keep = max(1, min(len(windows), math.ceil(max_bytes / seq_len)))
        windows = [windows[i] for i in np.linspace(0, len(windows) - 1, keep).round().astype(int)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    full = [w for w in windows if len(w) == seq_len + 1]
    partial = [w for w in windows if len(w) < seq_len + 1]
    nll_total, by_position = 0.0, torch.zeros(seq_len, dtype=torch.float64)
    for i in range(0, len(full), batch_size):
        batch = torch.from_numpy(np.stack(full[i:i + batch_size]).astype(np.int64)).to(device)
        nll = _nll(model, batch)
        nll_total += nll.sum().item()
        by_position += nll.sum(0).cpu()
    for w in partial:
        nll_total += _nll(model, torch.from_numpy(w.astype(np.int64))[None].to(device)).sum().item()
    model.train(was_training)
    n_bytes = sum(len(w) - 1 for w in windows)
    loss_by_position = (by_position / len(full) / math.log(2)).tolist() if full else []
    return {"bpb": nll_total / math.log(2) / n_bytes, "nll_nats": nll_total, "bytes": n_bytes,
            "windows": len(windows), "seq_len": seq_len, "loss_by_position": loss_by_position,
            "loss_by_position_buckets": log2_buckets(loss_by_position) if full else []}


def _nll(model, window: torch.Tensor) -> torch.Tensor:
    """Per-byte negative log-likelihood (nats, float64) of window[:, 1:] given window[:, :-1]."""
    logits = model(window[:, :-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: softmax in float32
    return F.cross_entropy(logits.transpose(1, 2), window[:, 1:], reduction="none").double()
