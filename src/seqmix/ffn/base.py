"""The FFN base class and registry."""
from __future__ import annotations

from torch import nn

from seqmix.registry import Registry

FFNS = Registry("ffn")
register_ffn = FFNS.register


class FFN(nn.Module):
    def __init__(self, d_model: int, *, layer_idx: int = 0, n_layers: int = 1):
        super().__init__()
        self.d_model, self.layer_idx, self.n_layers = d_model, layer_idx, n_layers

    def init_state(self, batch_size: int) -> dict:
        return {}
