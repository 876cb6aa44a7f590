r"""Block attention with context states: the attention half of the Block-State Transformer
(Fathi et al. 2023, "Block-State Transformers", §3).

Tokens are cut into blocks of W. A query at position t, in block β(t) = ⌊t / W⌋, computes

    self:   o_t = Σ_{s: β(s) = β(t), s ≤ t} softmax_s(scale · q_t·k_s) v_s          (causal, inside the block)
    cross:  c_t = Σ_j softmax_j(scale · qc_t·ck_{β(t), j}) cv_{β(t), j}               (the block's S context states)

and returns [o_t ; c_t] concatenated on the feature axis. Cost O(T·(W + S)).

Shapes: q, k, v, qc ``[B, H, T, D]``; ck, cv ``[B, H, NB, S, D]``, the context keys/values of each block
this call touches (NB = ⌈(r + T) / W⌉, the first being the block of the first token). The state is the
KV cache of the current block, ``(k_cache, v_cache)`` each ``[B, H, r, D]`` with r < W tokens of the block
already seen (r = 0 at a block start), so decoding costs O(W) per token. Output ``[B, H, T, 2D]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
KVCache = tuple[Tensor, Tensor]


def _prepare(q, k, ck, block_size, state):
    if block_size < 1:
        raise ValueError(f"block_attention: block_size={block_size} must be a positive integer")
    r = 0 if state is None else state[0].shape[2]
    if r >= block_size:
        raise ValueError(f"block_attention: cache of {r} tokens does not fit a block of {block_size}")
    n_blocks = -(-(r + q.shape[2]) // block_size)
    if ck.shape[2] != n_blocks:
        raise ValueError(f"block_attention: {n_blocks} blocks are touched, but context for {ck.shape[2]} was given")
    return r, q.shape[-1] ** -0.5


def _tail(k: Tensor, v: Tensor, block_size: int) -> KVCache:
    """The keys/values of the last, unfinished block (empty when the last block is complete)."""
    keep = k.shape[2] % block_size
    return k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:]


def parallel(q: Tensor, k: Tensor, v: Tensor, qc: Tensor, ck: Tensor, cv: Tensor, block_size: int,
             state: KVCache | None = None) -> tuple[Tensor, KVCache]:
    """Materialised: a T × (r + T) block-diagonal causal mask, and every token's own copy of its block's context."""
    r, scale = _prepare(q, k, ck, block_size, state)
    T = q.shape[2]
    if state is not None:
        k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)
    qpos = torch.arange(r, r + T, device=q.device)[:, None]
    kpos = torch.arange(r + T, device=q.device)[None, :]
    mask = (kpos <= qpos) & (kpos // block_size == qpos // block_size)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    block = qpos[:, 0] // block_size  # [T]: index of each query's block in ck
    ck_t, cv_t = ck[:, :, block], cv[:, :, block]  # [B, H, T, S, D]
    weights = torch.softmax(scale * torch.einsum("bhtd,bhtsd->bhts", qc, ck_t), dim=-1)
    c = torch.einsum("bhts,bhtsd->bhtd", weights, cv_t)
    return torch.cat([o, c], dim=-1), _tail(k, v, block_size)


def chunked(q: Tensor, k: Tensor, v: Tensor, qc: Tensor, ck: Tensor, cv: Tensor, block_size: int,
            state: KVCache | None = None) -> tuple[Tensor, KVCache]:
    """Blocks as a batch axis: causal attention inside each [W, W] block, and each block against its context.

    The r cached positions get zero queries (their outputs are dropped); the tail is zero-padded to a
    whole block, and causality keeps the padded keys away from every real query.
    """
    r, scale = _prepare(q, k, ck, block_size, state)
    B, H, T, D = q.shape
    W, NB = block_size, ck.shape[2]
    if state is not None:
        k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)
    new_state = _tail(k, v, W)
    pad = NB * W - (r + T)
    blocks = lambda x, front: F.pad(x, (0, 0, front, pad)).view(B, H, NB, W, x.shape[-1])
    o = F.scaled_dot_product_attention(blocks(q, r), blocks(k, 0), blocks(v, 0), is_causal=True, scale=scale)
    c = F.scaled_dot_product_attention(blocks(qc, r), ck, cv, scale=scale)
    out = torch.cat([o, c], dim=-1).reshape(B, H, NB * W, 2 * D)[:, :, r:r + T]
    return out, new_state


def step(q: Tensor, k: Tensor, v: Tensor, qc: Tensor, ck: Tensor, cv: Tensor, block_size: int,
         state: KVCache | None = None) -> tuple[Tensor, KVCache]:
    """One token: q, k, v, qc [B, H, D]; ck, cv [B, H, S, D], the context of the current block."""
    scale = q.shape[-1] ** -0.5
    if state is not None:
        k, v = torch.cat([state[0], k[:, :, None]], dim=2), torch.cat([state[1], v[:, :, None]], dim=2)
    else:
        k, v = k[:, :, None], v[:, :, None]
    if k.shape[2] > block_size:
        raise ValueError(f"block_attention: cache of {k.shape[2] - 1} tokens does not fit a block of {block_size}")
    o = torch.softmax(scale * torch.einsum("bhd,bhsd->bhs", q, k), dim=-1)
    c = torch.softmax(scale * torch.einsum("bhd,bhsd->bhs", qc, ck), dim=-1)
    out = torch.cat([torch.einsum("bhs,bhsd->bhd", o, v), torch.einsum("bhs,bhsd->bhd", c, cv)], dim=-1)
    return out, _tail(k, v, block_size)
