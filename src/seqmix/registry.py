"""Name -> class registries (mixers, FFNs) with option validation that names what is allowed."""
from __future__ import annotations

import inspect

CONTRACT_ARGS = ("self", "d_model", "n_heads", "layer_idx", "n_layers")


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator: make the class available under `name`."""

        def deco(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.registered_name = name
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ValueError(f"{self.kind}: unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[name]

    def option_names(self, name: str) -> list[str]:
        """Keyword options the class accepts beyond the contract's own arguments."""
        params = inspect.signature(self.get(name).__init__).parameters
        return [p for p, v in params.items() if p not in CONTRACT_ARGS and v.kind is v.KEYWORD_ONLY]

    def build(self, name: str, *args, options: dict | None = None, **contract):
        options = dict(options or {})
        allowed = self.option_names(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"{self.kind}_options for {name!r}: unknown option(s) {unknown}; allowed: {allowed}")
        return self.get(name)(*args, **contract, **options)
