"""Random training windows that never cross a document boundary, reproducible batch by batch.

Batch ``i`` depends only on ``(seed, i)``, so the sampler's whole state is the index of the next batch:
a resumed run asks for the same batches an uninterrupted one would have.
"""
from __future__ import annotations

import numpy as np
import torch

from seqmix.data.corpus import Document


class BatchSampler:
    """Windows of ``seq_len + 1`` bytes, uniform over every start inside a document -> (inputs, targets).

    Documents shorter than ``seq_len + 1`` bytes cannot hold a window and are not sampled.
    """

    def __init__(self, documents: list[Document], batch_size: int, seq_len: int, seed: int = 0):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"BatchSampler: batch_size={batch_size} and seq_len={seq_len} must be positive")
        lengths = np.array([len(d.data) for d in documents], dtype=np.int64)
        self.starts_per_doc = np.maximum(lengths - seq_len, 0)  # a window needs seq_len + 1 bytes
        if self.starts_per_doc.sum() == 0:
            longest = int(lengths.max()) if len(lengths) else 0
            raise ValueError(f"no training document holds seq_len + 1 = {seq_len + 1} bytes (the longest has "
                             f"{longest}); use a smaller seq_len")
        self.data = np.frombuffer(b"".join(d.data for d in documents), dtype=np.uint8)
        self.doc_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.cum_starts = np.cumsum(self.starts_per_doc)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.position = 0

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index``: inputs and next-byte targets, int64 [batch_size, seq_len]."""
        rng = np.random.default_rng([self.seed, index])
        u = rng.integers(0, self.cum_starts[-1], size=self.batch_size)
        doc = np.searchsorted(self.cum_starts, u, side="right")
        within = u - (self.cum_starts[doc] - self.starts_per_doc[doc])
        start = self.doc_offsets[doc] + within
        windows = torch.from_numpy(self.data[start[:, None] + np.arange(self.seq_len + 1)].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.position)
        self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        differ = [k for k in ("seed", "batch_size", "seq_len") if state.get(k) != mine[k]]
        if differ:
            raise ValueError("sampler state does not fit this sampler: " +
                             ", ".join(f"{k} {state.get(k)!r} != {mine[k]!r}" for k in differ))
        self.position = int(state["position"])
