"""Mixers side by side: y = Σ_i mixer_i(x) on the same input (Falcon-H1's attention and Mamba-2 in one block)."""
from __future__ import annotations

from torch import nn

from seqmix.mixers.base import MIXERS, Mixer, register_mixer


@register_mixer("parallel")
class Parallel(Mixer):
    """y = mixer_0(x) + mixer_1(x) + ...

    Options: ``mixers``, the list of mixers, each a name or ``{"mixer": name, "options": {...}}`` as in a pattern
    entry (``n_heads`` among the options sets its own head count; otherwise the model's).
    State: {"0": mixer_0's state, "1": mixer_1's, ...}.
    """

    def __init__(self, d_model: int, n_heads: int, *, layer_idx: int = 0, n_layers: int = 1,
                 mixers: list[str | dict] = ("mamba2", "attention")):
        super().__init__(d_model, n_heads, layer_idx=layer_idx, n_layers=n_layers)
        if not mixers:
            raise ValueError("parallel option mixers=[]: give at least one mixer")
        built = []
        for entry in mixers:
            if isinstance(entry, dict) and not (set(entry) <= {"mixer", "options"} and "mixer" in entry):
                raise ValueError(f"parallel option mixers: entry {entry!r} must be a mixer name or a dict with "
                                 "'mixer' and optionally 'options'")
            name, options = (entry, {}) if isinstance(entry, str) else (entry["mixer"], dict(entry.get("options", {})))
            if name not in MIXERS.names():
                raise ValueError(f"parallel option mixers: unknown mixer {name!r}; available: {MIXERS.names()}")
            mixer = MIXERS.build(name, d_model, options.pop("n_heads", n_heads), options=options,
                                 layer_idx=layer_idx, n_layers=n_layers)
            if mixer.normalizes_input:
                raise ValueError(f"parallel option mixers: the {name} mixer holds its own input norms")
            built.append(mixer)
        self.mixers = nn.ModuleList(built)

    def init_state(self, batch_size: int):
        return {str(i): m.init_state(batch_size) for i, m in enumerate(self.mixers)}

    def forward(self, x, state=None, shared=None):
        y, new_state = 0, {}
        for i, m in enumerate(self.mixers):
            out, new_state[str(i)] = m(x, None if state is None else state[str(i)], shared)
            y = y + out
        return y, (None if state is None else new_state)
