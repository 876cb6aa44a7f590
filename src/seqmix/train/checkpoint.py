"""Checkpoints: a directory written atomically, whose files are verified by sha256 before anything loads.

Layout of one checkpoint directory::

    model.safetensors    the weights (tied weights stored once)
    trainer.safetensors  optimiser moments and RNG states (only what resuming needs)
    config.json          {"model": ModelConfig, "train": TrainConfig} as dicts
    meta.json            format, step, data position, ... and the sha256 of every file above

The directory is first written as a hidden temporary sibling, flushed to disk, then renamed into place:
a crash leaves either the complete checkpoint or none. A training run keeps its checkpoints in
``<out>/checkpoints/step_XXXXXXXX``; as only complete ones exist, the highest step is the newest.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = "seqmix-checkpoint/1"
MODEL_FILE, TRAINER_FILE, CONFIG_FILE, META_FILE = "model.safetensors", "trainer.safetensors", "config.json", "meta.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _alias_groups(model: torch.nn.Module) -> list[list[str]]:
    """state_dict names grouped by the tensor they share (tied embeddings): the first name is stored."""
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = (t.data_ptr(), tuple(t.shape), t.stride()) if t.numel() else (name,)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {g[0]: state[g[0]].detach().contiguous().cpu() for g in _alias_groups(model)}


def save_checkpoint(directory: str | Path, model: torch.nn.Module, config: dict, meta: dict,
                    trainer_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint directory atomically. ``config`` and ``meta`` must be JSON-serialisable."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"checkpoint {directory} exists already")
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(model_tensors(model), tmp / MODEL_FILE, metadata={"format": FORMAT})
    if trainer_tensors is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainer_tensors.items()}, tmp / TRAINER_FILE)
    _write_json(tmp / CONFIG_FILE, config)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    _write_json(tmp / META_FILE, {**meta, "format": FORMAT, "sha256": files})
    for p in tmp.iterdir():
        _fsync(p)
    os.rename(tmp, directory)
    _fsync(directory.parent)
    return directory


class Checkpoint:
    """A verified checkpoint: ``config`` and ``meta`` dicts, and the tensors, loaded only after every
    file's sha256 matched ``meta.json``."""

    def __init__(self, directory: str | Path):
        self.directory = d = Path(directory)
        try:
            self.meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{d} is not a seqmix checkpoint (no {META_FILE})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"checkpoint {d}: {META_FILE} is corrupt ({err})") from None
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint {d}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        hashes = self.meta.get("sha256", {})
        if not {MODEL_FILE, CONFIG_FILE} <= set(hashes):
            raise ValueError(f"checkpoint {d}: {META_FILE} records no sha256 for {MODEL_FILE} and {CONFIG_FILE}")
        for name, expected in hashes.items():
            if not (d / name).exists():
                raise ValueError(f"checkpoint {d}: {name} is missing")
            actual = sha256_file(d / name)
            if actual != expected:
                raise ValueError(f"checkpoint {d}: {name} is truncated or corrupt (sha256 {actual[:12]}…, "
                                 f"recorded {expected[:12]}…); refusing to load it")
        self.config = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        self.model_tensors = load_file(d / MODEL_FILE)
        self.trainer_tensors = load_file(d / TRAINER_FILE) if TRAINER_FILE in hashes else None

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model``; every name and shape is checked before anything is copied."""
        groups = _alias_groups(model)
        target = model.state_dict()
        stored, expected = set(self.model_tensors), {g[0] for g in groups}
        problems = [f"missing {n}" for n in sorted(expected - stored)]
        problems += [f"unexpected {n}" for n in sorted(stored - expected)]
        problems += [f"{n}: shape {tuple(self.model_tensors[n].shape)} != model's {tuple(target[n].shape)}"
                     for n in sorted(stored & expected) if self.model_tensors[n].shape != target[n].shape]
        if problems:
            raise ValueError(f"checkpoint {self.directory} does not fit this model: " + "; ".join(problems[:6]) +
                             (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
        full = {name: self.model_tensors[g[0]] for g in groups for name in g}
        model.load_state_dict(full, strict=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run's ``out`` directory or its ``checkpoints`` directory."""
    p = Path(path)
    if (p / META_FILE).exists():
        return p
    for base in (p / "checkpoints", p):
        found = latest(base)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no seqmix checkpoint there (no {META_FILE}, no checkpoints/step_*)")


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step_{step:08d}"


def latest(checkpoints: Path) -> Path | None:
    """The newest checkpoint under a ``checkpoints`` directory, or None."""
    steps = sorted(p for p in checkpoints.glob("step_*") if (p / META_FILE).exists())
    return steps[-1] if steps else None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(SeqMixLM with the checkpoint's weights, Checkpoint) from a checkpoint or run directory."""
    from seqmix.model import ModelConfig, SeqMixLM

    ckpt = Checkpoint(resolve(path))
    model = SeqMixLM(ModelConfig.from_dict(ckpt.config["model"]))
    ckpt.load_weights(model)
    return model.to(device), ckpt
