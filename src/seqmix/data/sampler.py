"""Training batches, reproducible batch by batch: random windows inside documents, or packed rows.

Batch ``i`` depends only on ``(seed, i)``, so a sampler's whole state is the index of the next batch: a
resumed run asks for the same batches an uninterrupted one would have. Row ``r`` of batch ``i`` is the same
whichever ``rows`` are asked for, so processes that each take a disjoint slice of rows (one rank's share of
the global batch, one micro-batch of it) together read exactly the batch a single process reads.
"""
from __future__ import annotations

import numpy as np
import torch

from seqmix.data.documents import Document
from seqmix.data.tokens import TokenSplit

IGNORE = -100  # target of a position whose next token is another document's (cross_entropy's ignore_index)


def as_token_split(data: TokenSplit | list[Document]) -> TokenSplit:
    """A TokenSplit as given, or documents as bytes."""
    return data if isinstance(data, TokenSplit) else TokenSplit.from_documents(list(data))


class _Sampler:
    """The position / state machinery shared by the samplers; subclasses define ``batch``."""

    packed = False

    def __init__(self, batch_size: int, seq_len: int, seed: int):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"{type(self).__name__}: batch_size={batch_size} and seq_len={seq_len} must be positive")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.position = 0

    def _starts(self, index: int, rows: slice | None) -> np.ndarray:
        """The random draw of batch ``index`` (all ``batch_size`` rows are drawn, then ``rows`` kept)."""
        u = np.random.default_rng([self.seed, index]).integers(0, self.n_starts, size=self.batch_size)
        return u if rows is None else u[rows]

    def __iter__(self):
        return self

    def __next__(self):
        out = self.batch(self.position)
        self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "packed": self.packed}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        differ = [k for k in ("seed", "batch_size", "seq_len", "packed") if state.get(k, False) != mine[k]]
        if differ:
            raise ValueError("sampler state does not fit this sampler: " +
                             ", ".join(f"{k} {state.get(k)!r} != {mine[k]!r}" for k in differ))
        self.position = int(state["position"])


class BatchSampler(_Sampler):
    """Windows of ``seq_len + 1`` tokens, uniform over every start inside a document -> (inputs, targets).

    ``documents``: a TokenSplit (in memory or memory-mapped: a batch reads only its own windows), or a list
    of Documents read as bytes. Documents shorter than ``seq_len + 1`` tokens cannot hold a window and are
    not sampled.
    """

    def __init__(self, documents: TokenSplit | list[Document], batch_size: int, seq_len: int, seed: int = 0):
        super().__init__(batch_size, seq_len, seed)
        split = as_token_split(documents)
        lengths = split.lengths
        self.starts_per_doc = np.maximum(lengths - seq_len, 0)  # a window needs seq_len + 1 tokens
        if self.starts_per_doc.sum() == 0:
            longest = int(lengths.max()) if len(lengths) else 0
            raise ValueError(f"no training document holds seq_len + 1 = {seq_len + 1} tokens (the longest has "
                             f"{longest}); use a smaller seq_len, or pack documents")
        self.split = split
        self.doc_offsets = split.offsets[:-1]
        self.cum_starts = np.cumsum(self.starts_per_doc)
        self.n_starts = int(self.cum_starts[-1])

    def batch(self, index: int, rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index`` (only ``rows`` of it, if given): inputs and next-token targets, int64
        [rows, seq_len]."""
        u = self._starts(index, rows)
        doc = np.searchsorted(self.cum_starts, u, side="right")
        within = u - (self.cum_starts[doc] - self.starts_per_doc[doc])
        start = self.doc_offsets[doc] + within
        windows = torch.from_numpy(self.split.windows(start, self.seq_len + 1))
        return windows[:, :-1], windows[:, 1:]


class PackedSampler(_Sampler):
    """Packed rows: windows of ``seq_len + 1`` tokens uniform over the concatenation of all documents, so a
    row holds the end of one document, whole short ones and the start of the next; every document, however
    short, is trained on -> (inputs, targets, cu_seqlens).

    ``cu_seqlens`` (int64 ``[n_pieces + 1]``) are the cumulative lengths of the document pieces over the
    flattened ``[rows · seq_len]`` inputs (row starts included), for ``SeqMixLM(..., cu_seqlens=)``, which
    starts every piece from the zero state. A target that is the first token of the next document is
    ``IGNORE``: nothing in a piece predicts another document. ``documents`` as for BatchSampler.
    """

    packed = True

    def __init__(self, documents: TokenSplit | list[Document], batch_size: int, seq_len: int, seed: int = 0):
        super().__init__(batch_size, seq_len, seed)
        split = as_token_split(documents)
        total = int(split.offsets[-1])
        if total < seq_len + 1:
            raise ValueError(f"the training documents hold {total} tokens together, fewer than seq_len + 1 = "
                             f"{seq_len + 1}; use a smaller seq_len")
        self.split = split
        self.doc_ends = split.offsets[1:]
        self.n_starts = total - seq_len

    def batch(self, index: int, rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch number ``index`` (only ``rows`` of it, if given): inputs, targets (``IGNORE`` across a
        document boundary), both int64 [rows, seq_len], and cu_seqlens."""
        T = self.seq_len
        position = self._starts(index, rows)[:, None] + np.arange(T + 1)
        doc = np.searchsorted(self.doc_ends, position, side="right")
        windows = torch.from_numpy(self.split.windows(position[:, 0], T + 1))
        inputs, targets = windows[:, :-1], windows[:, 1:].clone()
        crosses = torch.from_numpy(doc[:, 1:] != doc[:, :-1])  # the target is another document's first token
        targets[crosses] = IGNORE
        starts = torch.zeros_like(crosses)
        starts[:, 0] = True  # a row starts a piece; so does every position after a crossing
        starts[:, 1:] = crosses[:, :-1]
        cu_seqlens = torch.cat([starts.reshape(-1).nonzero().reshape(-1), torch.tensor([inputs.numel()])])
        return inputs, targets, cu_seqlens
