"""The mixer contract and the registry that names every mixer.

A mixer maps ``x [B, T, d_model] -> y [B, T, d_model]`` causally and carries a recurrent state:

* ``Mixer(d_model, n_heads, *, layer_idx, n_layers, **options)`` — options are the mixer's own keyword
  arguments, their allowed values declared in their annotations (`seqmix.registry`); bad values raise
  ``ValueError`` naming the option and what is allowed;
* ``init_state(batch_size) -> dict[str, Tensor]`` — every tensor batch-first, on the module's device and
  dtype (caches, conv tails, SSM states, fast weights...);
* ``forward(x, state=None, shared=None) -> (y, new_state)`` — ``state=None`` is the training path: start
  from the zero state and return ``None`` (the mixer may skip building a state). With a state, any number
  of tokens continues it exactly (T = 1 is decoding). ``shared`` is a dict that lives for one model
  forward and lets a layer pass values to later layers (RWKV-7's value residual); the model puts the token
  embeddings of the forward's tokens there under ``EMBEDDINGS`` (Zamba-2's shared blocks read them).

The block normalises the mixer's input (x + mixer(norm x)) unless the mixer sets ``normalizes_input``:
then it reads the residual stream x itself and holds its own norms (e.g. TTT's official two-norm block).
"""
from __future__ import annotations

import torch
from torch import nn

from seqmix.registry import Registry

State = dict[str, torch.Tensor]
EMBEDDINGS = "embeddings"  # key in the per-forward `shared` dict: the token embeddings [B, T, d_model]

MIXERS = Registry("mixer")
register_mixer = MIXERS.register


class Mixer(nn.Module):
    normalizes_input: bool = False

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 head_dim: int | None = None):
        """``head_dim``: a mixer whose head width is an option of its own passes it (when set); otherwise heads
        split d_model evenly."""
        super().__init__()
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.layer_idx, self.n_layers = d_model, n_heads, layer_idx, n_layers
        self.head_dim = d_model // n_heads if head_dim is None else head_dim

    def init_state(self, batch_size: int) -> State:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State | None = None, shared: dict | None = None):
        """A mixer overrides this, or implements ``_forward`` and sets ``self.piece`` (see ``_in_pieces``)."""
        return self._in_pieces(x, state, self.piece)

    def _forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """The layer over x [B, T, d_model] from ``state`` (None = zeros): (y, new state)."""
        raise NotImplementedError

    def _in_pieces(self, x: torch.Tensor, state: State | None, piece: int):
        """``forward`` through ``_forward``: outside autograd a sequence longer than ``piece`` tokens runs ``piece``
        tokens at a time through the carried state (exact, the layer is causal), so every intermediate is
        [B, piece, ·] and stays in cache instead of being allocated at the full length (glibc maps a fresh tensor
        of ≥ 32 MiB anew on every call, and touching it first costs more than computing it). Returns (y, new state),
        the state None when none was given."""
        if x.shape[1] <= piece or torch.is_grad_enabled():
            y, new_state = self._forward(x, state)
            return y, (None if state is None else new_state)
        carried, ys = state, []
        for i in range(0, x.shape[1], piece):
            y, carried = self._forward(x[:, i:i + piece], carried)
            ys.append(y)
        return torch.cat(ys, 1), (None if state is None else carried)

    def _zeros(self, *shape: int) -> torch.Tensor:
        """Zeros on this module's device and dtype (for init_state): its parameters', or where every weight is a
        reduced-precision buffer (``seqmix.layers.low_precision``), the dtype those layers compute in."""
        p = next(self.parameters(), None)
        if p is None:
            p = next(b for b in self.buffers() if b.is_floating_point() and b.element_size() >= 4)
        return p.new_zeros(*shape)


def available_mixers() -> list[str]:
    """Names of all registered mixers, sorted."""
    return MIXERS.names()


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, H·D] -> [B, H, T, D]."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H·D]."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)
