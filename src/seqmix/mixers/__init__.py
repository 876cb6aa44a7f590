"""Mixers: nn.Modules around one op each, registered by name. Every module in this package is imported,
so a new mixer registers itself by living here and using ``@register_mixer``."""
import importlib
import pkgutil

from seqmix.mixers.base import MIXERS, Mixer, available_mixers, register_mixer

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["MIXERS", "Mixer", "available_mixers", "register_mixer"]
