"""Checkpoints: a directory written atomically, whose files are verified by sha256 before anything loads.

Layout of one checkpoint directory::

    model.safetensors    the weights (tied weights stored once)
    trainer.safetensors  optimiser moments and RNG states (only what resuming needs)
    config.json          {"model": ModelConfig, "train": TrainConfig} as dicts
    tokenizer.json       the tokenizer the model reads (seqmix.data.tokenizer); absent: bytes
    meta.json            format, layout, step, data position, ... and the sha256 of every file above

A *sharded* checkpoint (``meta["layout"] == "sharded"``, written by many processes at once) holds instead of
the weights and moments the files of ``torch.distributed.checkpoint`` (``.metadata`` and one ``*.distcp``
per process): ``{"model": ..., "optimizer": ...}`` state dicts that any number of processes, one included,
can load (``train.distributed.load_sharded``); trainer.safetensors then holds the RNG states only.

The directory is first written as a hidden temporary sibling, flushed to disk, then renamed into place:
a crash leaves either the complete checkpoint or none. A training run keeps its checkpoints in
``<out>/checkpoints/step_XXXXXXXX``; as only complete ones exist, the highest step is the newest.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from seqmix.data.sources import sha256_file
from seqmix.data.tokenizer import TOKENIZER_FILE, ByteTokenizer, from_json, save_tokenizer

FORMAT = "seqmix-checkpoint/1"
MODEL_FILE, TRAINER_FILE, CONFIG_FILE, META_FILE = "model.safetensors", "trainer.safetensors", "config.json", "meta.json"
SHARDED_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint
LAYOUTS = ("full", "sharded")


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
        if isinstance(t, DTensor):  # FSDP2: a shard's storage says nothing of the whole; shared = same object
            key = (id(t),)
        else:
            key = (t.data_ptr(), tuple(t.shape), t.stride()) if t.numel() else (name,)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def model_tensors(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors to store: one name per shared tensor, from ``state`` (a full state dict of ``model``,
    e.g. gathered from its shards) or from ``model.state_dict()``."""
    state = model.state_dict() if state is None else state
    return {g[0]: state[g[0]].detach().contiguous().cpu() for g in _alias_groups(model)}


def save_checkpoint(directory: str | Path, model: torch.nn.Module | dict[str, torch.Tensor], config: dict, meta: dict,
                    trainer_tensors: dict[str, torch.Tensor] | None = None, tokenizer=None) -> Path:
    """Write a checkpoint directory atomically. ``model``: a module, or its tensors as ``model_tensors``
    gives them. ``config`` and ``meta`` must be JSON-serialisable; ``tokenizer`` (None: bytes) is saved too."""
    tmp = begin_checkpoint(directory)
    tensors = model_tensors(model) if isinstance(model, torch.nn.Module) else model
    save_file(tensors, tmp / MODEL_FILE, metadata={"format": FORMAT})
    return commit_checkpoint(tmp, directory, config, {**meta, "layout": "full"}, trainer_tensors, tokenizer)


def temporary(directory: str | Path, tag: str | None = None) -> Path:
    """The hidden sibling a checkpoint is written into before the rename; ``tag`` (default: the process id)
    tells writers apart, and processes writing one sharded checkpoint together share it."""
    directory = Path(directory)
    return directory.with_name(f".{directory.name}.tmp-{os.getpid() if tag is None else tag}")


def begin_checkpoint(directory: str | Path, tag: str | None = None) -> Path:
    """Create a fresh, empty ``temporary(directory, tag)`` to write the files into."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"checkpoint {directory} exists already")
    tmp = temporary(directory, tag)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: Path, directory: str | Path, config: dict, meta: dict,
                      trainer_tensors: dict[str, torch.Tensor] | None = None, tokenizer=None) -> Path:
    """Add trainer tensors, the tokenizer, config and meta (with the sha256 of every file in ``tmp``), flush,
    rename."""
    directory = Path(directory)
    if trainer_tensors is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainer_tensors.items()}, tmp / TRAINER_FILE)
    save_tokenizer(tokenizer or ByteTokenizer(), tmp)
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
    file's sha256 matched ``meta.json``. ``model_tensors`` is None for a sharded checkpoint."""

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
        self.layout = self.meta.get("layout", "full")
        if self.layout not in LAYOUTS:
            raise ValueError(f"checkpoint {d}: layout {self.layout!r}, expected one of {list(LAYOUTS)}")
        hashes = self.meta.get("sha256", {})
        weights = MODEL_FILE if self.layout == "full" else SHARDED_METADATA
        if not {weights, CONFIG_FILE} <= set(hashes):
            raise ValueError(f"checkpoint {d}: {META_FILE} records no sha256 for {weights} and {CONFIG_FILE}")
        for name, expected in hashes.items():
            if not (d / name).exists():
                raise ValueError(f"checkpoint {d}: {name} is missing")
            actual = sha256_file(d / name)
            if actual != expected:
                raise ValueError(f"checkpoint {d}: {name} is truncated or corrupt (sha256 {actual[:12]}…, "
                                 f"recorded {expected[:12]}…); refusing to load it")
        self.config = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        self.model_tensors = load_file(d / MODEL_FILE) if self.layout == "full" else None
        self.trainer_tensors = load_file(d / TRAINER_FILE) if TRAINER_FILE in hashes else None

    @property
    def tokenizer_name(self) -> str:
        return self.config.get("train", {}).get("tokenizer", "bytes")

    def tokenizer(self):
        """The tokenizer the model was trained with (bytes for a checkpoint that holds none), verified with
        the other files."""
        path = self.directory / TOKENIZER_FILE
        if TOKENIZER_FILE not in self.meta["sha256"]:
            return ByteTokenizer()
        return from_json(path.read_text(encoding="utf-8"), self.tokenizer_name)

    def _stored_shapes(self) -> dict[str, tuple]:
        if self.layout == "full":
            return {n: tuple(t.shape) for n, t in self.model_tensors.items()}
        from torch.distributed.checkpoint import FileSystemReader

        entries = FileSystemReader(str(self.directory)).read_metadata().state_dict_metadata
        return {k[len("model."):]: tuple(v.size) for k, v in entries.items() if k.startswith("model.")}

    def check_fits(self, model: torch.nn.Module) -> None:
        """Raise a ValueError listing every missing, unexpected or differently shaped tensor."""
        target = model.state_dict()
        # a full checkpoint stores one name per shared tensor, a sharded one every name
        expected = {g[0] for g in _alias_groups(model)} if self.layout == "full" else set(target)
        stored = self._stored_shapes()
        problems = [f"missing {n}" for n in sorted(expected - set(stored))]
        problems += [f"unexpected {n}" for n in sorted(set(stored) - expected)]
        problems += [f"{n}: shape {stored[n]} != model's {tuple(target[n].shape)}"
                     for n in sorted(set(stored) & expected) if stored[n] != tuple(target[n].shape)]
        if problems:
            raise ValueError(f"checkpoint {self.directory} does not fit this model: " + "; ".join(problems[:6]) +
                             (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))

    def full_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The weights of a full checkpoint as a state dict of ``model`` (every name, shared ones included),
        after ``check_fits``."""
        self.check_fits(model)
        return {name: self.model_tensors[g[0]] for g in _alias_groups(model) for name in g}

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model`` (one process); every name and shape is checked before anything is
        copied."""
        if self.layout == "full":
            model.load_state_dict(self.full_state(model), strict=True)
            return
        from seqmix.train.distributed import load_sharded

        self.check_fits(model)
        load_sharded(self.directory, model)


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
