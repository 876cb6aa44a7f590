"""Helpers for the model state: a list (one per layer) of {"mixer": {...}, "ffn": {...}} dicts of tensors."""
from __future__ import annotations

from typing import Callable

import torch


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state):
    """Apply `fn` to every tensor of a (nested) state, keeping its structure."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, v) for v in state)
    return state


def detach_state(state):
    """Cut the graph (truncated backpropagation through time)."""
    return map_state(torch.Tensor.detach, state)


def select_batch(state, index: torch.Tensor):
    """Keep/reorder batch rows (every state tensor is batch-first)."""
    return map_state(lambda t: t.index_select(0, index), state)
