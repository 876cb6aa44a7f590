"""Mixture-of-experts feed-forward: each token goes through its top-k of n SwiGLU experts (Shazeer et al. 2017;
the routers of Qwen3-Next / Qwen-MoE, Mixtral and DeepSeek-V3 / Kimi as options), plus optional shared experts."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.ffn.base import FFN, register_ffn
from seqmix.ffn.mlp import MLP
from seqmix.ffn.swiglu import SwiGLU
from seqmix.layers import Linear
from seqmix.registry import NON_NEGATIVE, POSITIVE, Annotated, Literal


@register_ffn("moe")
class MoE(FFN):
    """y = Σ_{e ∈ top-k} w_e · SwiGLU_e(x)  [+ g(x) · SwiGLU_shared(x)],   SwiGLU_e(x) = W2_e (silu(W1_e x) ⊙ W3_e x).

    Router: s = softmax(W_r x) (``score="softmax"``, in float32 at least) or σ(W_r x) (``"sigmoid"``); the top ``top_k``
    experts of s + b are chosen, where b is a per-expert bias used for the choice only (``selection_bias``,
    DeepSeek-V3's and Kimi's load-balancing bias; zero and not trained otherwise); w = s of the chosen experts,
    divided by their sum when ``normalize`` (Qwen's ``norm_topk_prob``, Mixtral), times ``scale``
    (``routed_scaling_factor``). With ``n_groups`` > 1 the choice is group-limited (DeepSeek-V3, Kimi): the
    experts split into n_groups equal groups, each scored by the sum of its two best s + b, and the top_k
    experts are chosen within the ``top_groups`` best groups. Shared experts: one SwiGLU of width ``shared_hidden`` (0 = none) seen by every
    token, gated by σ(w_g · x) when ``shared_gate`` (Qwen3-Next). ``hidden``: each expert's width (default the
    dense SwiGLU's width divided by top_k, so a token's compute matches a dense layer's).

    Training adds the Switch Transformer load-balancing loss ``aux_loss_weight`` · E · Σ_e f_e P_e (f_e the
    fraction of (token, slot) choices going to expert e times top_k, P_e the mean router score), read by the
    training loop through ``auxiliary_loss(model)``. Experts are stored stacked: ``gate_up [E, 2h, d]`` (the
    W1 rows, then the W3 rows), ``down [E, d, h]``. ``expert="relu2"``: every expert, the shared one too, is
    an ungated MLP W2 relu(W1 x)² instead (Nemotron-H), ``gate_up [E, h, d]`` holding W1. Stateless.
    """

    def __init__(self, d_model: int, *, layer_idx: int = 0, n_layers: int = 1, n_experts: Annotated[int, POSITIVE] = 8,
                 top_k: Annotated[int, POSITIVE] = 2, hidden: Annotated[int, POSITIVE] | None = None,
                 score: Literal["softmax", "sigmoid"] = "softmax", normalize: bool = True,
                 scale: Annotated[float, POSITIVE] = 1.0, selection_bias: bool = False,
                 shared_hidden: Annotated[int, NON_NEGATIVE] = 0, shared_gate: bool = False,
                 n_groups: Annotated[int, POSITIVE] = 1, top_groups: Annotated[int, POSITIVE] | None = None,
                 aux_loss_weight: Annotated[float, NON_NEGATIVE] = 0.01,
                 expert: Literal["swiglu", "relu2"] = "swiglu"):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers)
        if top_k > n_experts:
            raise ValueError(f"moe option top_k={top_k}: must be at most n_experts={n_experts}")
        top_groups = n_groups if top_groups is None else top_groups
        if n_experts % n_groups or (n_groups > 1 and n_experts // n_groups < 2):
            raise ValueError(f"moe option n_groups={n_groups}: must divide n_experts={n_experts} into groups of ≥ 2")
        if top_groups > n_groups or top_k > top_groups * (n_experts // n_groups):
            raise ValueError(f"moe option top_groups={top_groups}: must be at most n_groups={n_groups} and leave "
                             f"top_k={top_k} experts to choose from")
        self.n_groups, self.top_groups = n_groups, top_groups
        if shared_gate and not shared_hidden:
            raise ValueError("moe option shared_gate=True needs shared experts (shared_hidden > 0)")
        h = hidden or max(1, 8 * ((8 * d_model // 3 + 7) // 8) // top_k)
        self.n_experts, self.top_k, self.hidden, self.score, self.normalize, self.scale = \
            n_experts, top_k, h, score, normalize, scale
        self.aux_loss_weight, self.gated = aux_loss_weight, expert == "swiglu"
        self.router = Linear(d_model, n_experts, bias=False)
        self.register_buffer("selection_bias", torch.zeros(n_experts) if selection_bias else None)
        bound_in, bound_out = 1 / math.sqrt(d_model), 1 / math.sqrt(h)  # nn.Linear's default scale per expert
        rows = 2 * h if self.gated else h
        self.gate_up = nn.Parameter(torch.empty(n_experts, rows, d_model).uniform_(-bound_in, bound_in))
        self.down = nn.Parameter(torch.empty(n_experts, d_model, h).uniform_(-bound_out, bound_out))
        self.shared = None if not shared_hidden else SwiGLU(d_model, hidden=shared_hidden) if self.gated else \
            MLP(d_model, hidden=shared_hidden)
        self.shared_gate = Linear(d_model, 1, bias=False) if shared_gate else None
        self.aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, d] -> (router scores [N, E] in float32 at least, chosen experts [N, k], their weights [N, k])."""
        logits = self.router(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        scores = logits.softmax(-1) if self.score == "softmax" else logits.sigmoid()
        choice = scores if self.selection_bias is None else scores + self.selection_bias.to(scores.dtype)
        if self.top_groups < self.n_groups:  # group-limited: experts only from the groups whose top two score most
            grouped = choice.unflatten(-1, (self.n_groups, -1))
            groups = grouped.topk(2, dim=-1).values.sum(-1).topk(self.top_groups, dim=-1).indices
            allowed = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter_(-1, groups, True)
            choice = grouped.masked_fill(~allowed[..., None], float("-inf")).flatten(-2)
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(-1, experts)
        if self.normalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return scores, experts, weights * self.scale

    def forward(self, x, state=None):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        scores, experts, weights = self.route(flat)
        # every (token, slot) choice, grouped by expert: one pair of products per expert that was chosen
        choices = experts.flatten()
        order = choices.argsort(stable=True)
        tokens_of, weights_of = order // self.top_k, weights.flatten()[order].to(x.dtype)
        counts = torch.bincount(choices, minlength=self.n_experts)
        out = torch.zeros_like(flat)
        start = 0
        for e, count in enumerate(counts.tolist()):
            if count:
                rows = tokens_of[start:start + count]
                hidden = F.linear(flat[rows], self.gate_up[e])
                if self.gated:
                    gate, up = hidden.chunk(2, dim=-1)
                    hidden = F.silu(gate) * up
                else:
                    hidden = torch.square(F.relu(hidden))
                y = F.linear(hidden, self.down[e])
                out.index_add_(0, rows, y * weights_of[start:start + count, None])
                start += count
        if self.shared is not None:
            shared = self.shared(flat)[0]
            out = out + (shared if self.shared_gate is None else torch.sigmoid(self.shared_gate(flat)) * shared)
        if self.training and torch.is_grad_enabled() and self.aux_loss_weight:
            fraction = counts.to(scores.dtype) / flat.shape[0]  # Σ_e fraction = top_k
            self.aux_loss = self.aux_loss_weight * self.n_experts * (fraction * scores.mean(0)).sum()
        return out.view(shape), state


def auxiliary_loss(model: nn.Module) -> torch.Tensor | float:
    """The sum of the load-balancing losses the MoE layers of `model` computed in its last training forward
    (0.0 when there are none); each is cleared once read."""
    total = 0.0
    for module in model.modules():
        if isinstance(module, MoE) and module.aux_loss is not None:
            total = total + module.aux_loss
            module.aux_loss = None
    return total
