"""SwiGLU feed-forward (Shazeer 2020): y = W_down (silu(W_gate x) ⊙ W_up x), or GeGLU with the tanh GELU."""
from __future__ import annotations

import torch.nn.functional as F

from seqmix.ffn.base import FFN, register_ffn
from seqmix.layers import Linear
from seqmix.registry import POSITIVE, Annotated, Literal


@register_ffn("swiglu")
class SwiGLU(FFN):
    """Hidden width ``hidden`` (default 8/3·d_model rounded up to a multiple of 8, Llama's choice); ``activation``
    of the gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU with the tanh approximation, Gemma's); ``bias`` on the
    three projections. Stateless."""

    def __init__(self, d_model: int, *, layer_idx: int = 0, n_layers: int = 1,
                 hidden: Annotated[int, POSITIVE] | None = None, activation: Literal["silu", "gelu_tanh"] = "silu",
                 bias: bool = False):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers)
        hidden = hidden or 8 * ((8 * d_model // 3 + 7) // 8)
        self.gelu = activation == "gelu_tanh"
        self.gate_up = Linear(d_model, 2 * hidden, bias=bias)
        self.down = Linear(hidden, d_model, bias=bias)

    def forward(self, x, state=None):
        gate, up = self.gate_up.parts(x, (self.down.in_features,) * 2)
        gate = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return self.down(gate * up), state
