"""SeqMixLM: a pre-norm language model built from any mixer or hybrid pattern."""
from __future__ import annotations

import torch
from torch import nn

from seqmix.ffn import FFNS
from seqmix.layers import RMSNorm
from seqmix.mixers import MIXERS
from seqmix.model.config import ModelConfig


class Block(nn.Module):
    """x + mixer(RMSNorm x), then x + ffn(RMSNorm x)."""

    def __init__(self, mixer: nn.Module, ffn: nn.Module, d_model: int, eps: float):
        super().__init__()
        self.norm1, self.mixer = RMSNorm(d_model, eps), mixer
        self.norm2, self.ffn = RMSNorm(d_model, eps), ffn

    def init_state(self, batch_size: int) -> dict:
        return {"mixer": self.mixer.init_state(batch_size), "ffn": self.ffn.init_state(batch_size)}

    def forward(self, x, state=None, shared=None):
        h, mixer_state = self.mixer(self.norm1(x), None if state is None else state["mixer"], shared)
        x = x + h
        h, ffn_state = self.ffn(self.norm2(x), None if state is None else state["ffn"])
        return x + h, (None if state is None else {"mixer": mixer_state, "ffn": ffn_state})


class SeqMixLM(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab]; with ``state=`` also returns the state after the tokens.

    >>> model = SeqMixLM(ModelConfig(mixer="gla", d_model=64, n_layers=2))
    >>> state = model.init_state(batch_size=1)
    >>> logits, state = model(tokens[:, :7], state=state)   # then any number of tokens, 1 = decode
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        blocks = []
        for i, spec in enumerate(c.layer_specs()):
            mixer = MIXERS.build(spec.mixer, c.d_model, c.n_heads, options=spec.options, layer_idx=i, n_layers=c.n_layers)
            ffn = FFNS.build(c.ffn, c.d_model, options=c.ffn_options, layer_idx=i, n_layers=c.n_layers)
            blocks.append(Block(mixer, ffn, c.d_model, c.norm_eps))
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
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

    def forward(self, tokens: torch.Tensor, state: list | None = None):
        self._check_tokens(tokens)
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} layers, the model has {len(self.blocks)}; "
                             "use model.init_state(batch_size)")
        x = self.embed(tokens)
        shared: dict = {}
        new_state = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else state[i], shared)
            new_state.append(s)
        logits = self.head(self.norm(x))
        return logits if state is None else (logits, new_state)
