"""Hybrid layer patterns: a preset name -> the mixer (and options) of each layer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class LayerSpec:
    mixer: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, entry) -> "LayerSpec":
        if isinstance(entry, str):
            return cls(entry)
        if isinstance(entry, dict) and set(entry) <= {"mixer", "options"} and "mixer" in entry:
            return cls(entry["mixer"], dict(entry.get("options", {})))
        raise ValueError(f"ModelConfig.pattern entry {entry!r}: must be a mixer name or "
                         "{'mixer': name, 'options': {...}}")


# preset name -> function(n_layers) -> list of pattern entries
PATTERNS: dict[str, Callable[[int], list]] = {}


def register_pattern(name: str):
    def deco(fn):
        PATTERNS[name] = fn
        return fn

    return deco
