"""Which architectures race, and at what width, so that every model has about the same parameter count."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from seqmix.mixers import available_mixers
from seqmix.model import PATTERNS, ModelConfig, SeqMixLM


@dataclass(frozen=True)
class Arch:
    """An entrant: a single mixer or a hybrid pattern, with optional mixer options."""

    name: str
    mixer: str | None = None
    pattern: str | None = None
    mixer_options: dict = field(default_factory=dict, hash=False, compare=False)

    def config(self, d_model: int, n_layers: int, n_heads: int, vocab_size: int = 256) -> ModelConfig:
        kind = {"pattern": self.pattern} if self.pattern else {"mixer": self.mixer}
        return ModelConfig(**kind, d_model=d_model, n_layers=n_layers, n_heads=n_heads, vocab_size=vocab_size,
                           mixer_options=dict(self.mixer_options))


def all_archs() -> list[Arch]:
    """Every registered mixer, then every hybrid preset."""
    return [Arch(m, mixer=m) for m in available_mixers()] + [Arch(p, pattern=p) for p in sorted(PATTERNS)]


def select_archs(names: list[str] | None) -> list[Arch]:
    known = {a.name: a for a in all_archs()}
    if not names:
        return list(known.values())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"arena --mixers: unknown {unknown}; choose from {sorted(known)}")
    return [known[n] for n in names]


def matched_width(arch: Arch, target_params: int, n_layers: int, n_heads: int, vocab_size: int = 256,
                  step: int = 8) -> tuple[int, int]:
    """(d_model, parameter count) closest to `target_params` among widths that the mixer accepts.

    Widths are multiples of lcm(step, n_heads); widths a mixer rejects (e.g. a fixed head size) are skipped.
    """
    unit = math.lcm(step, n_heads)
    best = None
    d = unit
    while True:
        try:
            n = SeqMixLM(arch.config(d, n_layers, n_heads, vocab_size)).num_parameters()
        except ValueError:
            n = None
        if n is not None:
            if best is None or abs(n - target_params) < abs(best[1] - target_params):
                best = (d, n)
            if n > target_params:
                break
        d += unit
        if d > 4096:
            break
    if best is None:
        raise ValueError(f"arena: no width up to 4096 builds a valid {arch.name} model")
    return best

