"""Ungated MLP feed-forward: y = W_down act(W_up x), e.g. relu² (So et al. 2021, Primer; Nemotron-H)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.ffn.base import FFN, register_ffn
from seqmix.layers import Linear
from seqmix.registry import POSITIVE, Annotated, Literal

ACTIVATIONS = {"relu2": lambda x: torch.square(F.relu(x)), "relu": F.relu, "gelu": F.gelu, "silu": F.silu,
               "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


@register_ffn("mlp")
class MLP(FFN):
    """Hidden width ``hidden`` (default 4·d_model), ``activation`` "relu2" (relu(x)², the default), "relu",
    "gelu" (exact, erf) or "silu", ``bias`` (biases on both projections). Stateless."""

    def __init__(self, d_model: int, *, layer_idx: int = 0, n_layers: int = 1,
                 hidden: Annotated[int, POSITIVE] | None = None,
                 activation: Literal["relu2", "relu", "gelu", "silu"] = "relu2", bias: bool = False):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers)
        hidden = hidden or 4 * d_model
        self.act = ACTIVATIONS[activation]
        self.up = Linear(d_model, hidden, bias=bias)
        self.down = Linear(hidden, d_model, bias=bias)

    def forward(self, x, state=None):
        return self.down(self.act(self.up(x))), state
