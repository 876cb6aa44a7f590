"""On-disk cache of finished arena cells: one JSON file per cell, written atomically."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cell_key(kind: str, name: str, params: dict) -> str:
    """A readable, stable key: kind-name-hash(params). Any change of settings makes a new cell."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{kind}-{name}-{digest}"


class CellCache:
    def __init__(self, root: Path):
        self.root = Path(root) / "cells"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:  # a half-written file cannot exist (atomic rename), but be safe
            return None

    def put(self, key: str, result: dict) -> None:
        p = self.path(key)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, p)

    def workdir(self, key: str) -> Path:
        """Scratch space for an unfinished cell (e.g. training checkpoints to resume from)."""
        d = self.root.parent / "work" / key
        d.mkdir(parents=True, exist_ok=True)
        return d
