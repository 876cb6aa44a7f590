"""Feed-forward (channel-mixing) layers, registered by name: ``ModelConfig(ffn=...)``.

Contract: ``FFN(d_model, *, layer_idx, n_layers, **options)``, ``init_state(batch_size) -> dict`` (empty
for stateless FFNs), ``forward(x, state=None) -> (y, new_state)`` with the same state rules as mixers.
Every module in this package is imported, so a new FFN registers itself with ``@register_ffn``.
"""
import importlib
import pkgutil

from seqmix.ffn.base import FFNS, FFN, register_ffn

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["FFNS", "FFN", "register_ffn"]
