"""Token shards: a corpus tokenized once (``prepare``) and read back window by window (``open_shards``).

A shard directory holds::

    manifest.json            format, source (files, sha256), tokenizer (name, sha256), dtype, splits
    tokenizer.json           the tokenizer (seqmix.data.tokenizer)
    <split>.tokens           every id of the split, uint16 (vocabularies up to 65536) or uint32, raw
    <split>.offsets.npy      the document index: int64 [D + 1], document d = tokens[offsets[d]:offsets[d + 1]]

The manifest records the size and sha256 of every shard file; ``open_shards`` checks both before it reads
anything, so a truncated or altered shard is refused, never half-read. The document index is memory-mapped;
the ids are read with ``pread``, a batch reading only its own windows (``tokens.TokenFile`` says why not a
memory map), so memory does not grow with the corpus.

``prepare`` cuts the source into units (``sources.plan_units``), tokenizes them in parallel processes (each
unit's ids go to ``parts/`` as soon as they are done, written to a temporary name and renamed), then joins
the parts into the shards and writes the manifest last. An interrupted prepare, run again, tokenizes only
the units not yet done; a directory that holds another source's or tokenizer's work is refused.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from seqmix.data.documents import SPLITS
from seqmix.data.sources import describe, plan_units, read_unit, sha256_file, training_sample
from seqmix.data.tokenizer import (TOKENIZER_FILE, Tokenizer, tokenizer_record, bpe_size, from_json,
                                   resolve_tokenizer, token_dtype)
from seqmix.data.tokens import TokenCorpus, TokenFile, TokenSplit

FORMAT = "seqmix-shards/1"
MANIFEST, PLAN, PARTS = "manifest.json", "plan.json", "parts"
BPE_TRAINING_BYTES = 32 << 20  # bpe:N trains on at most this much of the training split, spread over it
IN_PROCESS_BYTES = 32 << 20  # smaller sources are tokenized in this process (starting workers costs more)


def is_prepared(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / MANIFEST).is_file()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _identity(description: dict, tokenizer_spec: str) -> dict:
    return {"source_sha256": description["sha256"], "text_field": description["text_field"],
            "tokenizer": tokenizer_spec}


def _refuse_other_work(out: Path, recorded: dict, wanted: dict, tokenizer: Tokenizer | None) -> None:
    """Refuse a shard directory whose recorded work (source, text field, tokenizer) is not the one asked."""
    asked = dict(wanted)
    if tokenizer is not None:
        asked["tokenizer_sha256"] = tokenizer.sha256
    differ = [k for k in asked if recorded.get(k) != asked[k]]
    if differ:
        raise ValueError(f"{out} holds shards of another source or tokenizer ("
                         + "; ".join(f"{k} {recorded.get(k)!r}, asked {asked[k]!r}" for k in differ)
                         + "); choose another output directory, or delete it to prepare again")


# --- the worker ------------------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_json: str, name: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _worker_tokenizer = from_json(tokenizer_json, name)


def _tokenize_unit(job: tuple[int, dict, str | None, str]) -> tuple[int, int]:
    """Tokenize one unit into ``parts/<index>.npz`` -> (index, source bytes read)."""
    index, unit, text_field, parts = job
    tokenizer = _worker_tokenizer
    documents = read_unit(unit, text_field)
    ids = tokenizer.encode_many([d[1] for d in documents], [d[2] for d in documents])
    dtype = token_dtype(tokenizer.vocab_size)
    arrays = {}
    for split in SPLITS:
        mine = [i for i, d in enumerate(documents) if d[0] == split]
        if not mine:
            continue
        arrays[f"{split}.tokens"] = np.concatenate([ids[i] for i in mine]).astype(dtype, copy=False)
        arrays[f"{split}.lengths"] = np.array([len(ids[i]) for i in mine], dtype=np.int64)
        arrays[f"{split}.bytes"] = np.array(sum(len(documents[i][1]) for i in mine), dtype=np.int64)
        arrays[f"{split}.continues"] = np.array(documents[mine[0]][3])
        produced = int(tokenizer.token_bytes[arrays[f"{split}.tokens"]].sum())
        if produced != int(arrays[f"{split}.bytes"]):
            raise ValueError(f"tokenizer {tokenizer.name} does not reproduce the bytes of the {split} text of unit "
                             f"{index} ({produced} bytes from {int(arrays[f'{split}.bytes'])})")
    path = Path(parts) / f"{index:06d}.npz"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return index, unit["bytes"]


def _run_units(units: list[dict], todo: list[int], tokenizer: Tokenizer, text_field: str | None, parts: Path,
               workers: int, bar) -> None:
    jobs = [(i, units[i], text_field, str(parts)) for i in todo]
    if workers <= 1:
        _init_worker(tokenizer.to_json(), tokenizer.name)
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
        for job in jobs:
            bar.update(_tokenize_unit(job)[1])
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer.to_json(), tokenizer.name)) as pool:
        for _, read in pool.imap_unordered(_tokenize_unit, jobs):
            bar.update(read)


# --- prepare ---------------------------------------------------------------------------------------------

def prepare(source: str, tokenizer: str | Tokenizer = "bytes", out: str | Path = "prepared", *,
            text_field: str = "text", workers: int | None = None, quiet: bool = False) -> dict:
    """Tokenize ``source`` (file, directory or glob of text, JSONL and Parquet files) with ``tokenizer`` (a
    spec, or a tokenizer object used as it is) into shards in ``out``; return the manifest (with
    ``prepare_seconds``, ``tokenizer_seconds`` (training a BPE), ``tokenize_seconds`` and ``mb_per_s`` of this
    call, and ``already`` when nothing was left to do). ``workers``: processes (default: every core; sources
    under 32 MB are tokenized in this process)."""
    started = time.perf_counter()
    out = Path(out)
    description = describe(str(source), text_field)
    spec = tokenizer if isinstance(tokenizer, str) else tokenizer.name
    wanted = _identity(description, spec)
    # bytes, a file or an object: the one asked for must be the one recorded (bpe:N is the BPE trained here)
    if not isinstance(tokenizer, str):
        asked = tokenizer
    else:
        asked = None if bpe_size(spec) is not None else resolve_tokenizer(spec, lambda: ())
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        _refuse_other_work(out, manifest["identity"], wanted, asked)
        return {**manifest, "already": True}
    if out.exists() and any(out.iterdir()) and not (out / PLAN).is_file():
        raise ValueError(f"{out} exists and holds no seqmix shards; choose an empty or new output directory")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / TOKENIZER_FILE
    if (out / PLAN).is_file():  # an interrupted prepare: check it is the same work before reusing any of it
        plan = json.loads((out / PLAN).read_text(encoding="utf-8"))
        _refuse_other_work(out, plan["identity"], wanted, asked)
        units = plan["units"]
        tok = resolve_tokenizer(spec, lambda: (), saved)
        tokenizer_seconds = 0.0
    else:
        units = plan_units(description)
        tokenizer_started = time.perf_counter()
        tok = asked or resolve_tokenizer(spec, lambda: training_sample(units, description["text_field"],
                                                                            BPE_TRAINING_BYTES))
        tokenizer_seconds = time.perf_counter() - tokenizer_started
        saved.write_text(tok.to_json(), encoding="utf-8")
        _write_json(out / PLAN, {"identity": {**wanted, "tokenizer_sha256": tok.sha256}, "units": units})
    parts = out / PARTS
    parts.mkdir(exist_ok=True)
    todo = [i for i in range(len(units)) if not (parts / f"{i:06d}.npz").is_file()]
    unit_bytes = [u["bytes"] for u in units]
    workers = workers or os.cpu_count() or 1
    if description["bytes"] < IN_PROCESS_BYTES:
        workers = 1
    bar = tqdm(total=sum(unit_bytes) or None, initial=sum(unit_bytes) - sum(unit_bytes[i] for i in todo),
               unit="B", unit_scale=True, disable=quiet, desc=f"prepare ({workers} processes)", dynamic_ncols=True)
    tokenize_started = time.perf_counter()
    _run_units(units, todo, tok, description["text_field"], parts, min(workers, max(len(todo), 1)), bar)
    bar.close()
    tokenize_seconds = time.perf_counter() - tokenize_started
    splits = _join_parts(out, len(units), token_dtype(tok.vocab_size))
    seconds = time.perf_counter() - started
    manifest = {"format": FORMAT, "identity": {**wanted, "tokenizer_sha256": tok.sha256},
                "source": {k: description[k] for k in ("spec", "sha256", "bytes", "text_field")} |
                {"files": [{k: f[k] for k in ("name", "kind", "bytes", "sha256")} for f in description["files"]]},
                "tokenizer": tokenizer_record(tok), "dtype": token_dtype(tok.vocab_size).name, "splits": splits,
                "units": len(units), "workers": workers}
    _write_json(out / MANIFEST, manifest)
    shutil.rmtree(parts)
    (out / PLAN).unlink()
    read = sum(unit_bytes[i] for i in todo)
    return {**manifest, "already": False, "prepare_seconds": seconds, "tokenizer_seconds": tokenizer_seconds,
            "tokenize_seconds": tokenize_seconds,
            "mb_per_s": read / 1e6 / max(seconds, 1e-9)}


def _join_parts(out: Path, n_units: int, dtype: np.dtype) -> dict:
    """Append every unit's ids to ``<split>.tokens`` in unit order and build the document index."""
    files = {s: open(out / f".{s}.tokens.tmp", "wb") for s in SPLITS}
    lengths = {s: [] for s in SPLITS}
    n_bytes = dict.fromkeys(SPLITS, 0)
    try:
        for i in range(n_units):
            with np.load(out / PARTS / f"{i:06d}.npz") as part:
                for s in SPLITS:
                    if f"{s}.tokens" not in part:
                        continue
                    part[f"{s}.tokens"].astype(dtype, copy=False).tofile(files[s])
                    unit_lengths = part[f"{s}.lengths"]
                    if bool(part[f"{s}.continues"]) and lengths[s]:  # the same document goes on
                        lengths[s][-1][-1] += unit_lengths[0]
                        unit_lengths = unit_lengths[1:]
                    if len(unit_lengths):
                        lengths[s].append(unit_lengths.copy())
                    n_bytes[s] += int(part[f"{s}.bytes"])
    finally:
        for f in files.values():
            f.close()
    splits = {}
    for s in SPLITS:
        doc_lengths = np.concatenate(lengths[s]) if lengths[s] else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(doc_lengths)]).astype(np.int64)
        np.save(out / f".{s}.offsets.tmp.npy", offsets)
        os.replace(out / f".{s}.tokens.tmp", out / f"{s}.tokens")
        os.replace(out / f".{s}.offsets.tmp.npy", out / f"{s}.offsets.npy")
        splits[s] = {"tokens": int(offsets[-1]), "documents": len(doc_lengths), "bytes": n_bytes[s],
                     "files": {name: {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
                               for name in (f"{s}.tokens", f"{s}.offsets.npy")}}
    return splits


# --- reading ---------------------------------------------------------------------------------------------

def open_shards(directory: str | Path, verify: bool = True) -> TokenCorpus:
    """The prepared corpus in ``directory``, read from its files on demand, after checking every shard file's
    size and (``verify``) sha256 against the manifest."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        plan = " (an interrupted seqmix prepare: run it again to finish)" if (d / PLAN).exists() else ""
        raise FileNotFoundError(f"{d} holds no prepared shards (no {MANIFEST}){plan}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"shards {d}: {MANIFEST} is corrupt ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"shards {d}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    tokenizer = from_json((d / TOKENIZER_FILE).read_text(encoding="utf-8"), manifest["tokenizer"]["name"])
    if tokenizer.sha256 != manifest["tokenizer"]["sha256"]:
        raise ValueError(f"shards {d}: {TOKENIZER_FILE} is not the tokenizer the shards were made with "
                         f"(sha256 {tokenizer.sha256[:12]}…, recorded {manifest['tokenizer']['sha256'][:12]}…)")
    for split in manifest["splits"].values():
        for name, recorded in split["files"].items():
            path = d / name
            size = path.stat().st_size if path.exists() else None
            if size != recorded["bytes"]:
                raise ValueError(f"shards {d}: {name} is truncated or missing ({size} bytes, recorded "
                                 f"{recorded['bytes']}); prepare the corpus again")
            if verify and sha256_file(path) != recorded["sha256"]:
                raise ValueError(f"shards {d}: {name} is corrupt (its sha256 is not the recorded one); prepare the "
                                 "corpus again")
    dtype = np.dtype(manifest["dtype"])
    splits = {}
    for s, split in manifest["splits"].items():
        tokens = TokenFile(d / f"{s}.tokens", dtype, split["tokens"])
        splits[s] = TokenSplit(tokens, np.load(d / f"{s}.offsets.npy", mmap_mode="r"), tokenizer.token_bytes,
                               split["bytes"])
    return TokenCorpus(manifest["source"]["spec"], tokenizer, splits, manifest["source"]["sha256"],
                       {"shards": str(d), "manifest": manifest})
