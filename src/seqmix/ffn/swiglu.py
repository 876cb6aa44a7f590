"""SwiGLU feed-forward (Shazeer 2020): y = W_down (silu(W_gate x) ⊙ W_up x); GeGLU with a GELU in place of silu."""
from __future__ import annotations

from seqmix.ffn.base import FFN, register_ffn
from seqmix.ffn.mlp import ACTIVATIONS
from seqmix.layers import Linear
from seqmix.registry import POSITIVE, Annotated, Literal


@register_ffn("swiglu")
class SwiGLU(FFN):
    """Hidden width ``hidden`` (default 8/3·d_model rounded up to a multiple of 8, Llama's choice); ``bias``:
    biases on the three projections (off in Llama; Bamba's ``mlp_bias``); ``activation`` of the gate: "silu"
    (SwiGLU), "gelu" (exact, erf: GeGLU, Zamba-2's) or "gelu_tanh" (the tanh approximation, Gemma's). Stateless."""

    def __init__(self, d_model: int, *, layer_idx: int = 0, n_layers: int = 1,
                 hidden: Annotated[int, POSITIVE] | None = None, bias: bool = False,
                 activation: Literal["silu", "gelu", "gelu_tanh"] = "silu"):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers)
        hidden = hidden or 8 * ((8 * d_model // 3 + 7) // 8)
        self.gate_up = Linear(d_model, 2 * hidden, bias=bias)
        self.down = Linear(hidden, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]

    def forward(self, x, state=None):
        gate, up = self.gate_up.parts(x, (self.down.in_features,) * 2)
        return self.down(self.act(gate) * up), state
