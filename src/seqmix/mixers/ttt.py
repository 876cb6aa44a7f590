"""TTT-Linear and TTT-MLP mixers (Sun et al. 2024), with the paper's Mamba backbone or the plain Transformer one."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers import Linear, RMSNorm, ShortConv, apply_rope
from seqmix.mixers.base import Mixer, merge_heads, register_mixer, split_heads
from seqmix.ops import ttt as op
from seqmix.registry import NON_NEGATIVE, POSITIVE, Annotated, Literal


class TTTMixer(Mixer):
    """Projections -> RoPE at position t mod b -> TTT inner loop (ops.ttt) -> post-LN [-> ⊙ gelu gate] -> out.

    Per head h and token t (x_t the mixer input, d = head_dim):
        η_t = base_lr · σ(θ_lr,h · x_t + β_h) / d,   τ_i = max(0, 1/i + ε_i),   E_ij = τ_i η_j,
        z_t = q_t + LN_h(f_res(q_t; W_t)), W_t trained on ½‖LN_h(f_res(k_s; W)) − (v_s − k_s)‖² (see ops.ttt).

    Backbones (paper §2.7, Fig. 13; ttt-lm-jax ``ttt_linear`` vs ``ttt_linear_base``):

    * ``"transformer"``: q, k, v = θ_Q x, θ_K x, θ_V x; y = θ_O LN(z).
    * ``"mamba"`` (default, the paper's): a causal depthwise conv (width ``conv_size``) before the TTT layer,
      one shared θ_QK projection feeding two causal depthwise convs for q and k, and a GELU gate:
      y = θ_O (LN(z) ⊙ gelu(θ_G x)). The official block is h ← h + conv(RMSNorm h); h ← h + TTT(RMSNorm h);
      a mixer only sees u = RMSNorm(h), so here c = conv(u), y = c + TTT(RMSNorm(u + c)): the same
      components, with the normalised stream u standing in for h inside the second norm.
      ``residual_stream=True`` builds the official block exactly: the mixer reads h itself (the model's
      block then does not normalise it) and holds both norms, c = conv(RMSNorm₁ h),
      y = c + TTT(RMSNorm₂(h + c)) — what ``seqmix.interop.from_ttt_reference`` uses.

    Options: ``backbone``, ``mini_batch_size`` b (16; 1 = online GD, ≥ T = batch GD), ``base_lr`` η_base
    (None = the paper's: 1.0 TTT-Linear, 0.1 TTT-MLP), ``rope_theta``, ``conv_size``, ``checkpoint_group``
    (gradient checkpointing through time in training: keep W every that many mini-batches; 0 = off),
    ``residual_stream`` (Mamba backbone only, see above), ``norm_eps`` (eps of the mixer's RMSNorms).
    State: {"W1", "S1" (, "W2", "S2"): anchors and running gradient sums [B, H, d_in+1, d_out],
    "offset": [B] tokens into the current mini-batch, "pre_conv", "qk_conv": [B, K-1, d_model] (Mamba)}.
    """

    hidden_mult: int = 0  # width of the inner MLP's hidden layer in units of d; 0 = linear inner model
    default_base_lr: float = 1.0

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 backbone: Literal["mamba", "transformer"] = "mamba", mini_batch_size: Annotated[int, POSITIVE] = 16,
                 base_lr: Annotated[float, POSITIVE] | None = None, rope_theta: Annotated[float, POSITIVE] = 10000.0,
                 conv_size: Annotated[int, POSITIVE] = 4, checkpoint_group: Annotated[int, NON_NEGATIVE] = 0,
                 residual_stream: bool = False, norm_eps: Annotated[float, POSITIVE] = 1e-6):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        name = self.registered_name
        base_lr = self.default_base_lr if base_lr is None else base_lr
        if residual_stream and backbone != "mamba":
            raise ValueError(f"{name} option residual_stream=True: needs backbone='mamba', got backbone={backbone!r} "
                             f"(the transformer backbone has a single norm, the block's)")
        if self.head_dim % 2:
            raise ValueError(f"{name}: RoPE needs an even head_dim, got d_model/n_heads = {self.head_dim}")
        self.backbone, self.mini_batch_size, self.base_lr = backbone, mini_batch_size, float(base_lr)
        self.rope_theta, self.checkpoint_group = rope_theta, checkpoint_group
        self.normalizes_input = residual_stream
        H, d, D = n_heads, self.head_dim, d_model
        # [q, k, v] (transformer) or [qk, v, gate] (mamba), then the H learning-rate logits
        self.in_proj = Linear(D, 3 * D + H, bias=False)
        self.lr_bias = nn.Parameter(torch.zeros(H))
        self.token_idx_offset = nn.Parameter(torch.zeros(mini_batch_size))  # ε_i, learned offsets to 1/i
        widths = [d, d * self.hidden_mult, d] if self.hidden_mult else [d, d]
        self.W0 = nn.ParameterList(nn.Parameter(torch.randn(H, i, o) * 0.02) for i, o in zip(widths, widths[1:]))
        self.b0 = nn.ParameterList(nn.Parameter(torch.zeros(H, 1, o)) for o in widths[1:])
        self.ttt_norm_weight = nn.Parameter(torch.ones(H, d))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(H, d))
        self.post_norm = nn.LayerNorm(D, eps=1e-6)
        self.out = Linear(D, D, bias=False)
        for lin in (self.in_proj, self.out):
            nn.init.normal_(lin.weight, std=0.02)
        if backbone == "mamba":
            if residual_stream:
                self.pre_conv_norm = RMSNorm(D, eps=norm_eps)
            self.pre_conv = ShortConv(D, conv_size)
            self.ttt_norm_in = RMSNorm(D, eps=norm_eps)
            self.conv_q = ShortConv(D, conv_size)
            self.conv_k = ShortConv(D, conv_size)

    def _weights(self) -> tuple[torch.Tensor, ...]:
        """W0 of the inner model in the op's layout: [H, d_in + 1, d_out], bias as the last row."""
        return tuple(torch.cat([W, b], dim=-2) for W, b in zip(self.W0, self.b0))

    def init_state(self, batch_size: int):
        state = op.initial_state(self._weights(), batch_size)
        if self.backbone == "mamba":
            state["pre_conv"] = self.pre_conv.init_state(batch_size)
            state["qk_conv"] = self.conv_q.init_state(batch_size)
        return state

    def forward(self, x, state=None, shared=None):
        T, D = x.shape[1:]
        H, d, b = self.n_heads, self.head_dim, self.mini_batch_size
        new_state = {}
        if self.backbone == "mamba":
            conv_in = self.pre_conv_norm(x) if self.normalizes_input else x
            skip, new_state["pre_conv"] = self.pre_conv(conv_in, None if state is None else state["pre_conv"])
            x = self.ttt_norm_in(x + skip)
        proj, lr_logits = self.in_proj.parts(x, (3 * D, H))
        if self.backbone == "mamba":
            qk, v, gate = proj.chunk(3, dim=-1)
            window = self.conv_q.window(qk, None if state is None else state["qk_conv"])  # one for both
            q, k = self.conv_q.over_window(window, T), self.conv_k.over_window(window, T)
            new_state["qk_conv"] = window[:, T:]
        else:
            q, k, v = proj.chunk(3, dim=-1)
        q, k, v = split_heads(q, H), split_heads(k, H), split_heads(v, H)
        if state is not None and T == 1:
            positions = state["offset"][:, None]  # the offset is always < b
        else:
            positions = (torch.arange(T, device=x.device) + (0 if state is None else state["offset"][:, None])) % b
        q, k = apply_rope((q, k), positions, self.rope_theta, interleaved=True)
        eta = (self.base_lr / d) * torch.sigmoid(lr_logits + self.lr_bias).transpose(1, 2)  # [B, H, T]
        i = torch.arange(1, b + 1, dtype=x.dtype, device=x.device)  # in x's dtype, so 1/i is exact in float64
        tau = F.relu(1 / i + self.token_idx_offset)
        inner = (tau, self._weights(), self.ttt_norm_weight, self.ttt_norm_bias)
        if state is not None and T == 1:
            z, op_state = op.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], eta[:, :, 0], *inner, state=state,
                                  mini_batch_size=b)
            z = z[:, :, None]
        else:
            z, op_state = op.chunked(q, k, v, eta, *inner, state=state, mini_batch_size=b,
                                     checkpoint_group=self.checkpoint_group)
        z = self.post_norm(merge_heads(z))
        if self.backbone == "mamba":  # gate, and the pre-conv's output skips the TTT layer: y = skip + z θ_Oᵀ
            z = z * F.gelu(gate, approximate="tanh")
            y = self.out.add_to(skip, z)
        else:
            y = self.out(z)
        return y, (None if state is None else {**op_state, **new_state})


@register_mixer("ttt_linear")
class TTTLinear(TTTMixer):
    __doc__ = "TTT-Linear: inner model f_res(z) = z W + b.\n\n" + TTTMixer.__doc__
    hidden_mult = 0
    default_base_lr = 1.0


@register_mixer("ttt_mlp")
class TTTMLP(TTTMixer):
    __doc__ = "TTT-MLP: inner model f_res(z) = gelu(z W1 + b1) W2 + b2, hidden width 4·d.\n\n" + TTTMixer.__doc__
    hidden_mult = 4
    default_base_lr = 0.1
