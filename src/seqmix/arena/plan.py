"""Which architectures race, at what width, and the cells of a preset (section, cache key, computation)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from seqmix.mixers import available_mixers
from seqmix.model import PATTERNS, ModelConfig, SeqMixLM

# Families for small-multiple plots: each panel draws one family, with attention as the reference in all.
FAMILIES = {
    "attention": ("attention", "bst"),
    "linear attention": ("linear_attention", "gla", "mlstm", "deltanet", "gated_deltanet", "kda", "lightning"),
    "state-space": ("mamba", "mamba2", "s4d", "rglru"),
    "RWKV": ("rwkv4", "rwkv6", "rwkv7"),
    "TTT": ("ttt_linear", "ttt_mlp"),
    "hybrids": tuple(sorted(PATTERNS)),
}


def family(name: str) -> str:
    return next((f for f, members in FAMILIES.items() if name in members), "other")


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

    def with_options(self, options: dict) -> "Arch":
        return Arch(self.name, self.mixer, self.pattern, {**self.mixer_options, **options})


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


@dataclass
class Item:
    """One cell of the plan: `run(progress, workdir)` computes it, `key` finds it in the cache (the key hashes
    every setting the cell depends on), `tags` are added to the result when it is collected (so one cell can
    serve two sections, e.g. the default TTT-Linear language model is also the ablation's b = 16 variant)."""

    section: str
    key: str
    label: str
    run: Callable
    tags: dict = field(default_factory=dict)


SECTIONS = ("lm", "ttt", "recall", "prompt_order", "kan", "theory", "speed")


class Plan:
    """Every cell of a preset, in the order they run: quality first, then the speed section, whose rounds
    run one after another (round 1 of every entrant, then round 2, ...) so the spread over rounds sees the
    machine's drift across the whole section."""

    def __init__(self, preset, selected: list[Arch], sections: list[str], cell_key: Callable,
                 explicit_selection: bool = False, data: dict | None = None):
        from seqmix.arena import cells  # cells imports this module (Arch)

        self.preset, self.items, self._cell_key = preset, [], cell_key
        lm = preset.lm
        by_name = {a.name: a for a in selected}

        def entrants(names):
            """A section's own list of entrants, unless the user named the entrants (--mixers)."""
            if names is None or explicit_selection:
                return list(selected)
            return [by_name[n] for n in names if n in by_name]

        lm_entrants = entrants(lm.entrants)
        speed_entrants = lm_entrants if preset.speed.entrants is None else entrants(preset.speed.entrants)
        sized = {a.name: a for a in lm_entrants + speed_entrants}
        for name in preset.speed.generation_archs:
            if name in by_name:
                sized.setdefault(name, by_name[name])
        if "ttt_linear" in by_name:
            sized.setdefault("ttt_linear", by_name["ttt_linear"])
        vocab = data["vocab_size"] if data else 256
        self.widths = {n: matched_width(a, lm.target_params, lm.n_layers, lm.n_heads, vocab)[0]
                       for n, a in sized.items()}
        self.lm_entrants = [a.name for a in lm_entrants]
        self.speed_entrants = [a.name for a in speed_entrants]

        def lm_item(section, arch, seed, tags=None):
            """A language model; its key does not depend on the section, so the sections share equal cells."""
            params = {"arch": asdict(arch), "d": self.widths[arch.name], "lm": asdict(lm), "seed": seed}
            if data is not None:  # another corpus or tokenizer: other cells (the default's keys stay as they were)
                params["data"] = {k: data[k] for k in ("sha256", "tokenizer", "tokenizer_sha256")}
            key = cell_key("lm", f"{arch.name}-s{seed}", params)
            self.items.append(Item(section, key, f"{section}:{arch.name}-s{seed}", lambda progress, workdir:
                                   cells.lm_cell(arch, self.widths[arch.name], lm, workdir, seed, data,
                                                 progress=progress),
                                   dict(tags or {})))

        if "lm" in sections:
            for arch in lm_entrants:
                for seed in range(lm.seeds):
                    lm_item("lm", arch, seed)
        if "ttt" in sections and "ttt_linear" in by_name:
            ttt = by_name["ttt_linear"]
            variants = [("mamba", b) for b in preset.ttt.mini_batch_sizes]
            variants += [(backbone, 16) for backbone in preset.ttt.backbones if backbone != "mamba"]
            for backbone, b in variants:
                opts = {"backbone": backbone, "mini_batch_size": lm.seq_len if b == "T" else b}
                default = opts == {"backbone": "mamba", "mini_batch_size": 16}
                arch = ttt if default else ttt.with_options(opts)  # the default is the LM entrant's own cells
                for seed in range(lm.seeds):
                    lm_item("ttt", arch, seed, {"variant": f"{backbone} b={b}", "backbone": backbone, "b": str(b)})
        if "recall" in sections:
            rs = preset.recall
            for arch in entrants(rs.archs):
                for pairs in rs.num_kv_pairs:
                    for w in rs.widths:
                        params = {"arch": asdict(arch), "width": w, "pairs": pairs, "recall": asdict(rs)}
                        self._add("recall", f"{arch.name}-d{w}-p{pairs}", params,
                                  lambda progress, workdir, a=arch, w=w, p=pairs:
                                  cells.recall_cell(a, w, p, rs, progress))
        if "prompt_order" in sections:
            ps = preset.prompt_order
            for arch in entrants(ps.archs):
                for announce in (False, True):
                    params = {"arch": asdict(arch), "announce": announce, "settings": asdict(ps)}
                    self._add("prompt_order", f"{arch.name}-{'first' if announce else 'after'}", params,
                              lambda progress, workdir, a=arch, announce=announce:
                              cells.prompt_order_cell(a, announce, ps, progress))
        if "kan" in sections:
            for seed in range(preset.kan.seeds):
                self._add("kan", f"s{seed}", {"kan": asdict(preset.kan), "seed": seed},
                          lambda progress, workdir, seed=seed: cells.kan_cell(preset.kan, seed))
        if "theory" in sections:
            self._add("theory", "theorem1", {"version": 1}, lambda progress, workdir: cells.theorem1_cell())
        if "speed" in sections:
            ss = preset.speed
            threads = cells.speed_threads(ss)
            self._add("speed", "ttt-forms", {"speed": asdict(ss), "threads": threads},
                      lambda progress, workdir: cells.ttt_forms_cell(ss), {"kind": "ttt_forms"})
            generation = [by_name[n] for n in ss.generation_archs if n in by_name]
            for r in range(ss.rounds):
                for kind, prefix, measure, archs in (("context", "", cells.speed_cell, speed_entrants),
                                                     ("generation", "generation-", cells.generation_cell, generation)):
                    for arch in archs:
                        params = {"arch": asdict(arch), "d": self.widths[arch.name], "lm": asdict(lm),
                                  "speed": asdict(ss), "threads": threads, "round": r}
                        self._add("speed", f"{prefix}{arch.name}-r{r}", params,
                                  lambda progress, workdir, a=arch, r=r, measure=measure:
                                  measure(a, self.widths[a.name], lm, ss, r), {"kind": kind})

    def _add(self, section: str, label: str, params: dict, run, tags: dict | None = None) -> None:
        self.items.append(Item(section, self._cell_key(section, label, params), f"{section}:{label}", run,
                               dict(tags or {})))

    def todo(self, cached: Callable[[str], bool]) -> list[Item]:
        """The items whose cell is not cached yet, each key once (a cell shared by two sections runs once)."""
        seen, out = set(), []
        for item in self.items:
            if item.key not in seen and not cached(item.key):
                seen.add(item.key)
                out.append(item)
        return out

    def collect(self, get: Callable[[str], dict | None]) -> dict:
        """{section: [cached result + tags, ...]} in plan order (cells not yet computed are left out)."""
        results = {s: [] for s in SECTIONS}
        for item in self.items:
            cell = get(item.key)
            if cell is not None:
                results[item.section].append({**cell, **item.tags})
        return results
