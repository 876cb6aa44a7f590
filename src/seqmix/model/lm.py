"""SeqMixLM: a pre-norm language model built from any mixer or hybrid pattern."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from seqmix.ffn import FFNS
from seqmix.layers import Linear, ShortConv, make_norm
from seqmix.mixers import MIXERS
from seqmix.mixers.base import EMBEDDINGS
from seqmix.model.config import ModelConfig


class Block(nn.Module):
    """x + mixer(norm x), then x + ffn(norm x); the norm is ``ModelConfig.norm``. With ``norm_position="post"``
    the norms act on the sub-layers' outputs instead: x + norm(mixer(x)), then x + norm(ffn(x)) (OLMo-2); with
    "shared" the normalised input is also the residual: norm x + mixer(norm x), then likewise for the FFN
    (MiniMax-01). ``mixer_scales`` / ``ffn_scales`` (α, β) weight each sum: α · residual + β · branch.

    With ``mixer_conv = K > 0``, x + mixer(conv(norm x)): a causal depthwise convolution of kernel K (its tail
    is part of the block's state) gives every mixer the last K tokens, as in Zoology's recall experiments.

    No FFN (``ffn=None``, ``ModelConfig(ffn="none")``): x + mixer(norm x) only. A mixer whose
    ``normalizes_input`` is True reads x itself (it holds its own norms) and gets no norm here.

    Under autocast (bf16 training) the mixer runs in float32 with autocast off: recurrent states and their
    decays stay float32 (recurrences are sensitive to their dynamics, and some ops, e.g. triangular solves,
    have no bf16 CPU kernel); the FFN and the head, most of the matmul work, still run in bf16.
    """

    def __init__(self, mixer: nn.Module, ffn: nn.Module | None, d_model: int, eps: float, norm: str = "rmsnorm",
                 mixer_conv: int = 0, norm_position: str = "pre", mixer_scales=None, ffn_scales=None):
        super().__init__()
        if norm_position != "pre" and mixer.normalizes_input:
            raise ValueError(f"norm_position={norm_position!r}: the {mixer.registered_name} mixer holds its own "
                             "input norms")
        self.norm_position = norm_position
        self.post_norm = norm_position == "post"
        self.mixer_scales = None if mixer_scales in (None, (1, 1), [1, 1]) else tuple(map(float, mixer_scales))
        self.ffn_scales = None if ffn_scales in (None, (1, 1), [1, 1]) else tuple(map(float, ffn_scales))
        self.norm1 = nn.Identity() if mixer.normalizes_input else make_norm(norm, d_model, eps)
        self.conv = ShortConv(d_model, mixer_conv) if mixer_conv else None
        self.mixer = mixer
        self.norm2 = None if ffn is None else make_norm(norm, d_model, eps)
        self.ffn = ffn

    def init_state(self, batch_size: int) -> dict:
        state = {"mixer": self.mixer.init_state(batch_size),
                 "ffn": {} if self.ffn is None else self.ffn.init_state(batch_size)}
        if self.conv is not None:
            state["conv"] = self.conv.init_state(batch_size)
        return state

    def forward(self, x, state=None, shared=None):
        h = x if self.post_norm else self.norm1(x)
        if self.norm_position == "shared":
            x = h
        conv_tail = None
        if self.conv is not None:
            h, conv_tail = self.conv(h, None if state is None else state["conv"])
        if torch.is_autocast_enabled(h.device.type):
            with torch.autocast(h.device.type, enabled=False):
                h, mixer_state = self.mixer(h.float(), None if state is None else state["mixer"], shared)
        else:
            h, mixer_state = self.mixer(h, None if state is None else state["mixer"], shared)
        x = _residual(x, self.norm1(h) if self.post_norm else h, self.mixer_scales)
        ffn_state = {}
        if self.ffn is not None:
            h = x if self.post_norm else self.norm2(x)
            if self.norm_position == "shared":
                x = h
            h, ffn_state = self.ffn(h, None if state is None else state["ffn"])
            x = _residual(x, self.norm2(h) if self.post_norm else h, self.ffn_scales)
        if state is None:
            return x, None
        new_state = {"mixer": mixer_state, "ffn": ffn_state}
        if self.conv is not None:
            new_state["conv"] = conv_tail
        return x, new_state


def _residual(x: torch.Tensor, branch: torch.Tensor, scales: tuple[float, float] | None) -> torch.Tensor:
    """x + branch, or α x + β branch."""
    return x + branch if scales is None else scales[0] * x + scales[1] * branch


class SeqMixLM(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab]; with ``state=`` also returns the state after the tokens.

    >>> model = SeqMixLM(ModelConfig(mixer="gla", d_model=64, n_layers=2))
    >>> state = model.init_state(batch_size=1)
    >>> logits, state = model(tokens[:, :7], state=state)   # then any number of tokens, 1 = decode

    Packed documents: ``model(tokens, cu_seqlens=cu)`` (training path, no state) treats the flattened
    ``[B·T]`` tokens as documents with cumulative lengths ``cu`` (int, ``[n_docs + 1]``, from 0 to ``B·T``,
    flash-attn style; row ends are boundaries too). Every document starts from the zero state of every
    mixer, so no token sees another document.

    ``activation_checkpointing = True`` recomputes each block's activations in the backward pass instead of
    storing them (training path only): less memory for about one more forward pass.
    """

    activation_checkpointing: bool = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        blocks = []
        for i, spec in enumerate(c.layer_specs()):
            options = dict(spec.options)
            mixer = MIXERS.build(spec.mixer, c.d_model, options.pop("n_heads", c.n_heads), options=options,
                                 layer_idx=i, n_layers=c.n_layers)
            ffn_name, ffn_options = c.layer_ffn(spec)
            ffn = None if ffn_name == "none" else FFNS.build(ffn_name, c.d_model, options=ffn_options, layer_idx=i,
                                                             n_layers=c.n_layers)
            blocks.append(Block(mixer, ffn, c.d_model, c.norm_eps, c.norm, c.mixer_conv,
                                spec.norm_position or c.norm_position, spec.mixer_scales, spec.ffn_scales))
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.embed_norm = make_norm(c.norm, c.d_model, c.norm_eps) if c.embed_norm else None
        self.blocks = nn.ModuleList(blocks)
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps if c.final_norm_eps is None else c.final_norm_eps)
        self.head = Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.embed.weight

    def init_state(self, batch_size: int) -> list[dict]:
        """The zero state of every layer (KV caches, conv tails, SSM states, fast weights ...)."""
        return [block.init_state(batch_size) for block in self.blocks]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be an integer tensor [batch, time], got "
                             f"{getattr(tokens, 'dtype', type(tokens))} {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size={self.config.vocab_size}); "
                             f"got min {int(tokens.min())}, max {int(tokens.max())}")

    def forward(self, tokens: torch.Tensor, state: list | None = None, cu_seqlens: torch.Tensor | None = None):
        self._check_tokens(tokens)
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} layers, the model has {len(self.blocks)}; "
                             "use model.init_state(batch_size)")
        if cu_seqlens is None:
            return self._run(tokens, state)
        if state is not None:
            raise ValueError("cu_seqlens (packed documents) is a training-path option: give no state")
        # Gather every document into a right-padded [n_docs, max_len] batch, run the ordinary forward and
        # scatter the logits back: each document starts at position 0 from the zero state, and causality
        # makes the padding after it irrelevant, so this is exact for every mixer in every form.
        B, T = tokens.shape
        documents = _documents(cu_seqlens, B, T, tokens.device)
        if documents is None:  # one document per row: the rows themselves
            return self._run(tokens, None)
        index, inside = documents
        logits = self._run(tokens.reshape(B * T)[index], None)
        return logits[inside].reshape(B, T, -1)  # the documents are in flattened order

    def decode(self, tokens: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """``forward(tokens, state=state)`` for tokens the model sampled itself: ids taken from its own logits
        always lie in the vocabulary, so the range check (a host synchronisation per call) is skipped."""
        return self._run(tokens, state)

    def _run(self, tokens: torch.Tensor, state: list | None):
        x = self.embed(tokens)
        if self.config.embed_scale is not None:
            x = x * self.config.embed_scale
        shared: dict = {EMBEDDINGS: x}
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        new_state = []
        recompute = self.activation_checkpointing and state is None and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x, s = checkpoint(block, x, None, shared, use_reentrant=False)
            else:
                x, s = block(x, None if state is None else state[i], shared)
            new_state.append(s)
        logits = self.head(self.norm(x))
        if self.config.logit_soft_cap is not None:
            cap = self.config.logit_soft_cap
            logits = torch.tanh(logits / cap) * cap
        return logits if state is None else (logits, new_state)


def _documents(cu_seqlens: torch.Tensor, B: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(index [n_docs, max_len] into the flattened tokens, padded with each document's first token; mask of
    the real positions), or None when every row is one document."""
    n = B * T
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    if (cu_seqlens.dtype.is_floating_point or cu.dim() != 1 or cu.numel() < 2 or int(cu[0]) != 0
            or int(cu[-1]) != n or bool((cu.diff() <= 0).any())):
        raise ValueError(f"cu_seqlens must be a 1-D increasing integer tensor from 0 to batch·time = {n}, got "
                         f"{cu_seqlens.tolist() if cu_seqlens.numel() <= 16 else tuple(cu_seqlens.shape)}")
    cu = torch.unique(torch.cat([cu, torch.arange(0, n + 1, T, device=device)]))  # sorted; row ends are boundaries
    if cu.numel() == B + 1:
        return None
    starts, lengths = cu[:-1], cu.diff()
    offsets = torch.arange(int(lengths.max()), device=device)
    inside = offsets < lengths[:, None]
    return torch.where(inside, starts[:, None] + offsets, starts[:, None]), inside
