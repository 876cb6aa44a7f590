r"""Test-time training layers: TTT-Linear and TTT-MLP (Sun et al. 2024, "Learning to (Learn at Test Time)").

The hidden state is the weight W of an inner model f, trained on the sequence itself by mini-batch gradient
descent on a self-supervised loss. Per head, with keys k_t, queries q_t, values v_t (rows, width d):

    f(z; W)  = z + LN(f_res(z; W))                      (paper §2.7: LN and residual always in f)
    ℓ_t(W)   = ½ ‖LN(f_res(k_t; W)) − (v_t − k_t)‖²       (the residual folded into the target)
    W_i      = W⁽ⁿ⁾ − τ_i Σ_{j ≤ i} η_j ∇ℓ_j(W⁽ⁿ⁾)           (i, j: positions 1..b inside mini-batch n)
    z_i      = f(q_i; W_i),      W⁽ⁿ⁺¹⁾ = W_b

Every gradient of mini-batch n is taken at its anchor W⁽ⁿ⁾ (§2.4); W⁽⁰⁾ = W0 is learned. The learning
rates are E_ij = τ_i · η_j with η_j = η_base σ(θ_lr x_j + β)/d (one per token and head, computed by the
mixer) and τ_i = max(0, 1/i + ε_i) (computed by the mixer, ε learned).

**Paper vs official code (we follow the code).** The factor 1/i in τ_i appears in all three official
codebases (ttt-lm-jax, ttt-lm-pytorch, ttt-lm-kernels) but not in the paper's text: W_i uses the
η-weighted running *mean* of the gradients seen so far in the mini-batch, and the end-of-mini-batch update
uses τ_b ≈ 1/b. The /d in η turns the summed loss into the code's per-feature mean. GELU is the tanh
approximation (flax's default); its derivative here uses the exact constants √(2/π) and 3·0.044715, where
the official PyTorch code truncates them (a 3e-10 difference).

Inner models, given as ``weights``: a tuple of per-layer matrices, each ``[H, d_in + 1, d_out]`` with the
bias as its last row (z = [a, 1] W̃, homogeneous coordinates, so a bias is updated exactly like a weight):

* one layer ``(W1,)`` [H, d+1, d] — TTT-Linear, f_res(z) = z W1 + b1;
* two layers ``(W1, W2)`` [H, d+1, 4d], [H, 4d+1, d] — TTT-MLP, f_res(z) = gelu(z W1 + b1) W2 + b2.
  (Deeper stacks work too: App. A derives the dual form for any depth.)

Forms, and how they map to the paper:

* ``parallel`` — the **primal** form of §2.4–2.5 transcribed literally: per-token gradient tensors
  ∇ℓ_j(W⁽ⁿ⁾) [.., b, d_in+1, d_out] are materialised, W_i built by a cumulative sum, z_i = f(q_i; W_i).
  O(b·d²) memory per mini-batch: the oracle.
* ``chunked`` — the **dual** form (§2.5, App. A), chunk = mini-batch: matmuls only, no per-token d×d
  tensor; per layer, Z̄ = Ā W − (E ⊙ tril(Ā Aᵀ)) G and W⁽ⁿ⁺¹⁾ = W − τ_b (η ⊙ A)ᵀ G, where A / Ā are the
  layer inputs on keys / queries and G = ∂ℓ/∂z at the anchor. Optional gradient checkpointing through
  time (App. C): only W at the ends of groups of ``checkpoint_group`` mini-batches is kept for backward.
  Its loss gradient comes from ATen's layer-norm and GELU backward kernels (the oracle's from the closed
  forms below, so the two are independent); about six kernels per mini-batch for TTT-Linear.
* ``step`` — the primal form for decoding (as ttt-lm-pytorch's cache): the anchor weights plus the running
  gradient sums S_i = Σ_{j≤i} η_j ∇ℓ_j(W⁽ⁿ⁾), W_i = W⁽ⁿ⁾ − τ_i S_i.

Shapes: q, k, v ``[B, H, T, d]``; eta ``[B, H, T]``; tau ``[b]``; ln_weight, ln_bias ``[H, d]``.
State (a flat dict, batch-first): ``W1..WL`` anchors ``[B, H, d_in+1, d_out]``, ``S1..SL`` running
gradient sums (zero at a mini-batch boundary), ``offset`` ``[B]`` = tokens already seen in the current
mini-batch. It holds the partial mini-batch, so a sequence can be cut anywhere, inside a mini-batch too
(the official code refuses: "fractional update not supported yet"). ``ln_residual=False`` drops LN and
residual (f = f_res, ℓ = ½‖f_res(k) − v‖²): with one layer, W0 = 0, b = T and E = 1 this is Theorem 1's
un-normalised linear attention.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor

LN_EPS = 1e-6
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation: ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))."""
    return F.gelu(x, approximate="tanh")


def gelu_tanh_grad(x: Tensor) -> Tensor:
    """d/dx of `gelu_tanh`, in closed form."""
    t = torch.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float = LN_EPS) -> Tensor:
    """γ ⊙ (z − mean z) / sqrt(var z + eps) + β over the last dim (biased variance)."""
    return F.layer_norm(z, z.shape[-1:], eps=eps) * weight + bias


def ln_l2_bwd(z: Tensor, target: Tensor, weight: Tensor, bias: Tensor, eps: float = LN_EPS) -> Tensor:
    """∂/∂z of ½‖LN(z) − target‖², in closed form.

    With x̂ = (z − μ)/σ and ĝ = γ ⊙ (LN(z) − target): ∂ℓ/∂z = (ĝ − mean ĝ − x̂ · mean(ĝ ⊙ x̂)) / σ.
    """
    return _ln_l2_bwd_folded(z, weight * (bias - target), weight * weight, eps)


def _ln_l2_bwd_folded(z: Tensor, c: Tensor, weight_sq: Tensor, eps: float = LN_EPS) -> Tensor:
    """`ln_l2_bwd` with the token-only part folded in ahead of the loop: ĝ = γ² ⊙ x̂ + c, c = γ ⊙ (β − target)."""
    avg = z.new_full((z.shape[-1], 1), 1 / z.shape[-1])  # row means as mat-vecs: cheaper than mean() on CPU
    zc = z - z @ avg
    rstd = torch.rsqrt((zc * zc) @ avg + eps)
    xhat = zc * rstd
    g = torch.addcmul(c, xhat, weight_sq)
    return torch.addcmul(g - g @ avg, xhat, (g * xhat) @ avg, value=-1) * rstd


def _aug(a: Tensor) -> Tensor:
    """Append the constant feature 1 that multiplies the bias row."""
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


def _loss(k: Tensor, v: Tensor, ln_weight: Tensor, ln_bias: Tensor, ln_residual: bool):
    """What the loop needs of the loss, per token: (folded target [B, H, T, d], γ² [H, 1, d] or None).

    With LN: ℓ = ½‖LN(z) − (v − k)‖², target folded as γ ⊙ (β − (v − k)); without: ℓ = ½‖z − v‖², target v.
    """
    if not ln_residual:
        return v, None
    return ln_weight[:, None] * (ln_bias[:, None] - (v - k)), (ln_weight * ln_weight)[:, None]


def _ln_l2_grad_fused(z: Tensor, c: Tensor, weight_sq: Tensor) -> Tensor:
    """`_ln_l2_bwd_folded` in three ATen kernels: layer norm (x̂, μ, 1/σ), ĝ = γ² ⊙ x̂ + c, and layer norm's
    own backward of ĝ, which is exactly (ĝ − mean ĝ − x̂ · mean(ĝ ⊙ x̂)) / σ. Differentiable once more (layer
    norm's double backward), which is what training through the inner loop needs."""
    shape = z.shape[-1:]
    xhat, mean, rstd = torch.native_layer_norm(z, shape, None, None, LN_EPS)
    return torch.ops.aten.native_layer_norm_backward(torch.addcmul(c, xhat, weight_sq), z, shape, mean, rstd,
                                                     None, None, [True, False, False])[0]


def _inner_grads(Ws, keys: Tensor, target: Tensor, weight_sq: Tensor | None, z1: Tensor | None = None,
                 fused: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """Run the (augmented) keys through the inner model at the anchor and back-propagate the loss.

    `target`, `weight_sq` as made by `_loss`; `z1` = keys @ Ws[0] when already computed. Returns per layer l
    its augmented inputs A_l [.., m, d_in+1] and G_l = ∂ℓ_j/∂z_l [.., m, d_out] (row j = token j), so that
    ∇_{W_l} ℓ_j = A_l[j]ᵀ G_l[j].
    ``fused``: ATen's layer-norm and GELU backward kernels (the dual and step forms, a few kernels per
    mini-batch); False: the closed forms written out above (the parallel form, the oracle).
    """
    acts, zs = [keys], [keys @ Ws[0] if z1 is None else z1]
    for W in Ws[1:]:
        acts.append(_aug(gelu_tanh(zs[-1])))
        zs.append(acts[-1] @ W)
    if weight_sq is None:
        G = zs[-1] - target
    else:
        G = (_ln_l2_grad_fused if fused else _ln_l2_bwd_folded)(zs[-1], target, weight_sq)
    grads = [G]
    for l in range(len(Ws) - 1, 0, -1):
        G = G @ Ws[l][..., :-1, :].mT
        if fused:
            G = torch.ops.aten.gelu_backward(G, zs[l - 1], approximate="tanh")
        else:
            G = G * gelu_tanh_grad(zs[l - 1])
        grads.insert(0, G)
    return acts, grads


def _finish(q: Tensor, z: Tensor, ln_weight: Tensor, ln_bias: Tensor, ln_residual: bool) -> Tensor:
    """The inner model's output head: f(q) = q + LN(f_res(q)) (or f_res(q) without LN and residual)."""
    if not ln_residual:
        return z
    return q + layer_norm(z, ln_weight[:, None], ln_bias[:, None])


def _check(q, k, v, eta, tau, weights, mini_batch_size):
    if k.shape != q.shape or v.shape != q.shape or eta.shape != q.shape[:-1]:
        raise ValueError(f"ttt: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, eta {tuple(eta.shape)} "
                         "do not match ([B, H, T, d] and eta [B, H, T])")
    if not isinstance(mini_batch_size, int) or mini_batch_size < 1:
        raise ValueError(f"ttt: mini_batch_size={mini_batch_size!r} must be a positive int")
    if tau.shape != (mini_batch_size,):
        raise ValueError(f"ttt: tau must have shape [mini_batch_size={mini_batch_size}], got {tuple(tau.shape)}")
    d = q.shape[-1]
    if not weights or weights[0].shape[-2] != d + 1 or weights[-1].shape[-1] != d:
        raise ValueError(f"ttt: weights must map d={d} to d with a bias row, shapes [H, d_in+1, d_out]; "
                         f"got {[tuple(W.shape) for W in weights]}")


def _untracked_without_autograd(form):
    """Run a form under ``torch.inference_mode`` when autograd is off: the same kernels without version
    counters and view tracking, which the many small kernels of the sequential inner loop feel (about 25%
    faster here). What it returns is handed back as ordinary tensors (copies of those made inside), so the
    output and the state can go anywhere afterwards, autograd included."""
    def ordinary(x):
        if isinstance(x, torch.Tensor):
            return x.clone() if x.is_inference() else x
        if isinstance(x, dict):
            return {k: ordinary(v) for k, v in x.items()}
        return type(x)(ordinary(v) for v in x) if isinstance(x, (tuple, list)) else x

    @functools.wraps(form)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling() or torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return form(*args, **kwargs)
        with torch.inference_mode():
            result = form(*args, **kwargs)
        return ordinary(result)
    return run


def initial_state(weights, batch_size: int) -> dict[str, Tensor]:
    """The state at the start of a sequence: anchors = W0 for every sequence, zero gradient sums."""
    state = {}
    for l, W in enumerate(weights, 1):
        state[f"W{l}"] = W.expand(batch_size, *W.shape).clone()
        state[f"S{l}"] = W.new_zeros(batch_size, *W.shape)
    state["offset"] = torch.zeros(batch_size, dtype=torch.long, device=weights[0].device)
    return state


def _unpack(state, weights, batch_size: int):
    """(anchors, gradient sums, offset) from a state, or the start of a sequence when state is None."""
    if state is None:
        return [W.expand(batch_size, *W.shape) for W in weights], None, 0
    offset = state["offset"]
    r = int(offset[0])
    if len(offset) > 1 and (offset != r).any():
        raise ValueError("ttt: every sequence of a batch must be at the same position (state['offset'])")
    n = len(weights)
    Ws = [state[f"W{l}"] for l in range(1, n + 1)]
    Ss = [state[f"S{l}"] for l in range(1, n + 1)] if r else None  # the sums are zero at a boundary
    return Ws, Ss, r


def _pack(Ws, Ss, r: int, batch_size: int, device) -> dict[str, Tensor]:
    state = {}
    for l, W in enumerate(Ws, 1):
        state[f"W{l}"] = W
        state[f"S{l}"] = torch.zeros_like(W) if Ss is None else Ss[l - 1]
    state["offset"] = torch.full((batch_size,), r, dtype=torch.long, device=device)
    return state


@_untracked_without_autograd
def parallel(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, tau: Tensor, weights, ln_weight: Tensor,
             ln_bias: Tensor, state: dict | None = None, mini_batch_size: int = 16,
             ln_residual: bool = True) -> tuple[Tensor, dict]:
    """Primal form, materialised: explicit per-token gradients and weights W_i for each mini-batch."""
    _check(q, k, v, eta, tau, weights, mini_batch_size)
    B, H, T, _ = q.shape
    b = mini_batch_size
    Ws, Ss, r = _unpack(state, weights, B)
    if Ss is None:
        Ss = [torch.zeros_like(W) for W in Ws]
    target, weight_sq = _loss(k, v, ln_weight, ln_bias, ln_residual)
    outs, t = [], 0
    while t < T:
        m = min(b - r, T - t)  # tokens left in this mini-batch
        seg = slice(t, t + m)
        acts, grads = _inner_grads(Ws, _aug(k[:, :, seg]), target[:, :, seg], weight_sq, fused=False)
        per_token = [a[..., :, None] * G[..., None, :] for a, G in zip(acts, grads)]  # [B, H, m, din+1, dout]
        running = [S[:, :, None] + (eta[:, :, seg, None, None] * g).cumsum(2) for S, g in zip(Ss, per_token)]
        tau_seg = tau[r:r + m, None, None]
        W_tok = [W[:, :, None] - tau_seg * run for W, run in zip(Ws, running)]  # W_i for every token
        a = _aug(q[:, :, seg])
        for l, W in enumerate(W_tok):
            z = torch.einsum("bhti,bhtio->bhto", a, W)
            if l + 1 < len(W_tok):
                a = _aug(gelu_tanh(z))
        outs.append(z)
        if r + m == b:
            Ws, Ss, r = [W[:, :, -1] for W in W_tok], [torch.zeros_like(S) for S in Ss], 0
        else:
            Ss, r = [run[:, :, -1] for run in running], r + m
        t += m
    z = torch.cat(outs, dim=2) if outs else q.new_zeros(q.shape)
    return _finish(q, z, ln_weight, ln_bias, ln_residual), _pack(Ws, Ss, r, B, q.device)


@_untracked_without_autograd
def step(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, tau: Tensor, weights, ln_weight: Tensor,
         ln_bias: Tensor, state: dict | None = None, mini_batch_size: int = 16,
         ln_residual: bool = True) -> tuple[Tensor, dict]:
    """One token, primal form: q, k, v [B, H, d], eta [B, H] -> out [B, H, d].

    S_i = S_{i-1} + η_i ∇ℓ_i(W⁽ⁿ⁾),  W_i = W⁽ⁿ⁾ − τ_i S_i,  z_i = f(q_i; W_i); at i = b the anchor becomes W_b.
    Branch-free on the position (each sequence's own ``offset``, read on the device): no host synchronisation,
    one graph for torch.compile, and the sequences of a batch may stand at different positions.
    """
    q, k, v, eta = q[:, :, None], k[:, :, None], v[:, :, None], eta[:, :, None]  # one-token sequences
    _check(q, k, v, eta, tau, weights, mini_batch_size)
    B, n = q.shape[0], len(weights)
    state = initial_state(weights, B) if state is None else state
    Ws, Ss, offset = [state[f"W{l}"] for l in range(1, n + 1)], [state[f"S{l}"] for l in range(1, n + 1)], state["offset"]
    target, weight_sq = _loss(k, v, ln_weight, ln_bias, ln_residual)
    acts, grads = _inner_grads(Ws, _aug(k), target, weight_sq)
    eta = eta[..., None]
    grad_sums = [S + a.transpose(-1, -2) @ (eta * G) for S, a, G in zip(Ss, acts, grads)]  # S + η_i A_iᵀ G_i
    W_now = [W - tau[offset].view(B, 1, 1, 1) * S for W, S in zip(Ws, grad_sums)]
    a = _aug(q)
    for l, W in enumerate(W_now):
        z = a @ W
        if l + 1 < len(W_now):
            a = _aug(gelu_tanh(z))
    out = _finish(q, z, ln_weight, ln_bias, ln_residual)[:, :, 0]
    ends = (offset + 1 == mini_batch_size).view(B, 1, 1, 1)  # the mini-batch is complete: W_b is the anchor
    new_state = {}
    for l in range(n):
        new_state[f"W{l + 1}"] = torch.where(ends, W_now[l], Ws[l])
        new_state[f"S{l + 1}"] = grad_sums[l].masked_fill(ends, 0.0)
    new_state["offset"] = (offset + 1) % mini_batch_size
    return out, new_state


def _dual_minibatch(Ws, Ss, kq, keys, queries, target, eta, update0, scores0, E, tau, weight_sq,
                    complete: bool, in_place: bool):
    """One mini-batch in dual form, all [N, ...] with N = B·H, b = mini-batch size.

    kq [N, 2b, d+1]: augmented keys then queries (`keys`, `queries`: its two halves); target [N, b, d]
    (from `_loss`); eta [N, b, 1]; update0 = (τ_b η ⊙ keys)ᵀ [N, d+1, b]; E = tril(τ_i η_j) and
    scores0 = E ⊙ (queries keysᵀ) [N, b, b]. Everything but W is precomputed for all mini-batches at once.
    Ss: the gradient sums carried in when the mini-batch was entered part-way, else None. ``in_place``: W
    may be updated in place (autograd is off). For TTT-Linear this is six kernels: one product for keys and
    queries, three for the loss gradient G (`_ln_l2_grad_fused`), the outputs z̄ = Q W − scores0 G and the
    update W − update0 G. Returns (z̄ [N, b, d], anchors, sums).
    """
    z_keys, z = torch.bmm(kq, Ws[0]).split(len(tau), dim=1)  # keys and queries through layer 1 at once
    acts, grads = _inner_grads(Ws, keys, target, weight_sq, z_keys)
    a = queries
    for l, W in enumerate(Ws):
        if l:
            a = _aug(gelu_tanh(z))
            z = a @ W
        scores = scores0 if l == 0 else E * (a @ acts[l].mT)
        z = torch.baddbmm(z, scores, grads[l], alpha=-1)  # row i: a_i W_i = a_i W − τ_i Σ_{j≤i} η_j (a_i·A_j) G_j
        if Ss is not None:
            z = z - tau[:, None] * (a @ Ss[l])
    if Ss is None and complete:  # the common case: W⁽ⁿ⁺¹⁾ = W⁽ⁿ⁾ − τ_b Σ_j η_j A_jᵀ G_j
        scaled = [update0] + [(tau[-1] * eta * A).mT for A in acts[1:]]
        if in_place:
            return z, [W.baddbmm_(A, G, alpha=-1) for W, A, G in zip(Ws, scaled, grads)], None
        return z, [torch.baddbmm(W, A, G, alpha=-1) for W, A, G in zip(Ws, scaled, grads)], None
    sums = [(eta * A).mT @ G for A, G in zip(acts, grads)]
    if Ss is not None:
        sums = [S + s for S, s in zip(Ss, sums)]
    if complete:
        return z, [W - tau[-1] * s for W, s in zip(Ws, sums)], None
    return z, Ws, sums


def _dual_segment(Ws, Ss, q, k, v, eta, tau, ln_weight, ln_bias, ln_residual: bool, last_complete: bool):
    """Whole mini-batches q, k, v [B, H, n·b, d], eta [B, H, n·b] from anchors Ws (and sums Ss) [B·H, ..]:
    everything that does not depend on W is prepared for all n at once, then the loop of `_dual_minibatch`,
    then f(q) = q + LN(f_res(q)). Only the last mini-batch may be incomplete (its pads have η = 0).
    Returns (outputs [n, B·H, b, d], anchors, sums)."""
    B, H, T, d = q.shape
    b = len(tau)
    n = T // b
    # keys then queries of each mini-batch, with the constant feature 1 that multiplies the bias row
    blocks = [x.unflatten(2, (n, b)).permute(2, 0, 1, 3, 4) for x in (k, q, v)]  # [n, B, H, b, d] views
    kq = F.pad(torch.cat(blocks[:2], dim=-2), (0, 1), value=1.0)
    target, weight_sq = _loss(kq[..., :b, :d], blocks[2], ln_weight, ln_bias, ln_residual)
    kq = kq.flatten(1, 2)  # [n, B·H, 2b, d+1]
    keys, queries = kq[..., :b, :], kq[..., b:, :]
    eta = eta.unflatten(2, (n, b)).permute(2, 0, 1, 3).reshape(n, B * H, b, 1)
    update0 = (tau[-1] * eta * keys).mT
    E = torch.tril(tau[:, None] * eta.mT)  # [n, B·H, b, b]: τ_i η_j for j ≤ i
    if weight_sq is not None:
        weight_sq = weight_sq.expand(B, H, 1, d).reshape(B * H, 1, d)
    in_place = not torch.is_grad_enabled()  # `chunked` then hands in copies of the caller's anchors
    per_minibatch = zip(*(x.unbind() for x in (kq, keys, queries, target.reshape(n, B * H, b, d), eta, update0,
                                                 E * (queries @ keys.mT), E)))
    zs = []
    for i, (kq_i, keys_i, queries_i, target_i, eta_i, update0_i, scores0_i, E_i) in enumerate(per_minibatch):
        z, Ws, Ss = _dual_minibatch(Ws, Ss, kq_i, keys_i, queries_i, target_i, eta_i, update0_i, scores0_i, E_i,
                                    tau, weight_sq, last_complete or i + 1 < n, in_place)
        zs.append(z)
    z = torch.stack(zs)
    if ln_residual:  # f(q) = q + LN(f_res(q)), still blocked
        gamma, beta = (p.repeat(B, 1)[:, None] for p in (ln_weight, ln_bias))
        z = torch.addcmul(queries[..., :d] + beta, F.layer_norm(z, (d,), eps=LN_EPS), gamma)
    return z, Ws, Ss


SEGMENT = 32  # mini-batches prepared and finished at once without checkpointing: their data stays in cache


@_untracked_without_autograd
def chunked(q: Tensor, k: Tensor, v: Tensor, eta: Tensor, tau: Tensor, weights, ln_weight: Tensor,
            ln_bias: Tensor, state: dict | None = None, mini_batch_size: int = 16, ln_residual: bool = True,
            checkpoint_group: int = 0) -> tuple[Tensor, dict]:
    """Dual form, batched over B·H; any T and any starting offset.

    The sequence is padded to whole mini-batches aligned with the state's offset (pads have η = 0, so they
    add nothing to any gradient sum, and their outputs are dropped) and run in segments of whole
    mini-batches (`_dual_segment`, one loop step per mini-batch in `_dual_minibatch`). ``checkpoint_group``
    > 0 makes the segments that long and recomputes them in backward, keeping only W at their ends (when
    autograd records). The output [B, H, T, d] is laid out as [B, T, H, d] in memory, so merging the heads
    is free.
    """
    _check(q, k, v, eta, tau, weights, mini_batch_size)
    if not isinstance(checkpoint_group, int) or checkpoint_group < 0:
        raise ValueError(f"ttt: checkpoint_group={checkpoint_group!r} must be a non-negative int (0 = off)")
    B, H, T, d = q.shape
    b = mini_batch_size
    Ws, Ss, r = _unpack(state, weights, B)
    if T == 0:
        return q.clone(), _pack(Ws, Ss, r, B, q.device)
    end = r + T
    pad_back = (-end) % b
    n = (end + pad_back) // b
    if r or pad_back:
        q, k, v = (F.pad(x, (0, 0, r, pad_back)) for x in (q, k, v))
        eta = F.pad(eta, (r, pad_back))
    Ws = [W.reshape(B * H, *W.shape[2:]) for W in Ws]
    if Ss is not None:
        Ss = [S.reshape(B * H, *S.shape[2:]) for S in Ss]
    if not torch.is_grad_enabled():  # the segments update W in place: never write into the caller's tensors
        Ws = [W.clone() for W in Ws]
    recompute = bool(checkpoint_group) and torch.is_grad_enabled()
    segment = checkpoint_group if recompute else SEGMENT
    out = q.new_empty(B, n * b, H, d)
    for m0 in range(0, n, segment):
        tokens = slice(m0 * b, (m0 + segment) * b)
        args = (Ws, Ss, q[:, :, tokens], k[:, :, tokens], v[:, :, tokens], eta[:, :, tokens], tau, ln_weight,
                ln_bias, ln_residual, pad_back == 0 or m0 + segment < n)
        z, Ws, Ss = checkpoint(_dual_segment, *args, use_reentrant=False) if recompute else _dual_segment(*args)
        out[:, tokens].copy_(z.view(-1, B, H, b, d).permute(1, 0, 3, 2, 4).flatten(1, 2))
    new_r = end % b
    Ws = [W.reshape(B, H, *W.shape[1:]) for W in Ws]
    if Ss is not None:
        Ss = [S.reshape(B, H, *S.shape[1:]) for S in Ss]
    return out[:, r:r + T].transpose(1, 2), _pack(Ws, Ss if new_r else None, new_r, B, q.device)
