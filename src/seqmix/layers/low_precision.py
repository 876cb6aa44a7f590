"""Reduced-precision weights for inference: every linear layer's weight in bfloat16, or in int8 with one scale
per output row (weight-only quantization), while activations, recurrent states, decays, norms and embeddings
stay in the model's float32.

    bfloat16:  y = (x_bf16 W_bf16ᵀ) in float32
    int8:      y = (x_bf16 Qᵀ) ⊙ s,  Q = round(W / s) ∈ [−127, 127],  s_o = max_i |W_oi| / 127   (per output row o)

The few-row int8 product (decoding: at most ``FEW_ROWS`` rows) is torch's own CPU kernel for weight-only int8
(``torch._weight_int8pack_mm``, the one torchao's int8 weight-only path calls on CPU): it reads a quarter of
float32's bytes, and needs bfloat16 activations to be fast (with float32 ones it is 10× slower here). Longer
inputs (prefill) are compute-bound, and this CPU's bfloat16 GEMM runs at a seventh of its float32 one: there
the weight is widened to float32 for the product (the same values, rounded activations aside).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

LOW_PRECISION = ("bfloat16", "int8")
FEW_ROWS = 64  # up to this many rows, the low-precision kernels; beyond, the float32 GEMM on a widened weight


class WeightOnlyLinear(nn.Module):
    """A linear layer whose weight is held in bfloat16 or int8; input and output keep the input's dtype.
    Built from an ``nn.Linear``; not trainable (the weight is a buffer)."""

    def __init__(self, linear: nn.Linear, dtype: str):
        super().__init__()
        if dtype not in LOW_PRECISION:
            raise ValueError(f"weight dtype {dtype!r}: choose one of {list(LOW_PRECISION)}")
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        # the dtype and device the layer computes in (and the states of a mixer made only of such layers)
        self.register_buffer("compute", torch.empty(0, dtype=linear.weight.dtype, device=linear.weight.device),
                             persistent=False)
        w = linear.weight.detach().float()
        if dtype == "bfloat16":
            self.register_buffer("weight_bf16", w.to(torch.bfloat16))
        else:
            scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
            self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # torch 2.13's int8 kernel with bfloat16 activations crashes (segfault) unless in_features % 8 == 0
        widen = flat.shape[0] > FEW_ROWS or (self.dtype == "int8" and self.in_features % 8)
        if widen:  # compute-bound, or no safe kernel: float32 GEMM on the widened weight
            w = self.weight_bf16 if self.dtype == "bfloat16" else self.weight_int8
            w = w.to(x.dtype) if self.dtype == "bfloat16" else w.to(x.dtype) * self.scale.to(x.dtype)[:, None]
            y = flat.to(torch.bfloat16).to(x.dtype) @ w.t()
        elif self.dtype == "bfloat16":
            y = (flat.to(torch.bfloat16) @ self.weight_bf16.t()).to(x.dtype)
        else:
            y = torch._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.weight_int8,
                                          self.scale.to(torch.bfloat16)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def parts(self, x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
        return self(x).split(list(sizes), dim=-1)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return residual + self(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.dtype}"


def low_precision_weights(model: nn.Module, dtype: str) -> nn.Module:
    """Replace every ``nn.Linear`` of `model` (in place) by a ``WeightOnlyLinear`` holding its weight in `dtype`
    ("bfloat16" or "int8"); returns the model, in eval mode. An output head tied to the embedding gets its own
    low-precision copy; the embedding itself stays as it is. Only for inference: the replaced weights no longer
    train, and the model's state dict changes."""
    if dtype not in LOW_PRECISION:
        raise ValueError(f"weight dtype {dtype!r}: choose one of {list(LOW_PRECISION)}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, WeightOnlyLinear(child, dtype))
    return model.eval()
