"""A CPU kernel of seqmix's own for linear attention with one decay per head, forward only.

``head_decay_cpu.cpp`` (see it for the algorithm) runs, chunk by chunk with each chunk's work in cache,

* the gated delta rule S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ (``delta_rule.gated_chunked``), and
* gated linear attention S_t = α_t S_{t−1} + k_t v_tᵀ with α_t one scalar per head, or none
  (``gated_linear_attention.chunked``: linear attention, Mamba-2's SSD, lightning attention, per-head GLA),

with o_t = S_tᵀ (scale · q_t). Those functions call ``run`` when ``takes`` their inputs: outside autograd, on the
CPU, float32 or float64, the kernel built (``seqmix.native``; where it cannot be, one warning and the torch code
runs). ``allowed(False)`` keeps the torch code (tests run both).
"""
from __future__ import annotations

import pathlib

import torch

from seqmix.native import Kernel

Tensor = torch.Tensor


def _register_fake():
    @torch.library.register_fake("seqmix::head_decay_chunked")
    def _(q, k, v, beta, log_decay, state, scale, chunk):
        (B, _, T, Dk), H, Dv = q.shape, v.shape[1], v.shape[-1]
        return q.new_empty(B, T, H, Dv).transpose(1, 2), q.new_empty(B, H, Dk, Dv)


KERNEL = Kernel(pathlib.Path(__file__).with_name("head_decay_cpu.cpp"), "the CPU kernel of per-head-decay linear "
                "attention and the gated delta rule", "their chunked forms run in torch operations instead",
                on_load=_register_fake)


def allowed(flag: bool):
    """Inside this block the chunked forms use the kernel only if ``flag``."""
    return KERNEL.switched(flag)


def takes(*tensors: Tensor | None) -> bool:
    """Whether the kernel runs these inputs: allowed, nothing that autograd records, all on the CPU in one dtype,
    float32 or float64, and the kernel built (on the first call that gets this far)."""
    present = [t for t in tensors if t is not None]
    return (KERNEL.enabled and not (torch.is_grad_enabled() and any(t.requires_grad for t in present))
            and all(t.device.type == "cpu" for t in present) and len({t.dtype for t in present}) == 1
            and present[0].dtype in (torch.float32, torch.float64) and KERNEL.available())


def run(q: Tensor, k: Tensor, v: Tensor, beta: Tensor | None, log_decay: Tensor | None, state: Tensor | None,
        scale: float, chunk: int) -> tuple[Tensor, Tensor]:
    """q, k [B, Hk, T, Dk], v [B, H, T, Dv] (Hk dividing H: each query/key head serves H / Hk consecutive value
    heads), beta (None: no delta rule) and log_decay (None: no decay) [B, H, T], state [B, H, Dk, Dv] or None.
    Returns o [B, H, T, Dv] (a view of [B, T, H, Dv] memory) and the final state."""
    return torch.ops.seqmix.head_decay_chunked(q, k, v, beta, log_decay, state, scale, chunk)
