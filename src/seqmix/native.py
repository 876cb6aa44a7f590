"""seqmix's own C++ kernels, compiled on first use.

Each kernel is one ``.cpp`` file that defines operators in the ``seqmix`` namespace. ``Kernel.available()``
compiles it with the C++ compiler ``torch._inductor`` uses (``-O3``, this machine's instruction set, OpenMP
through torch's own libgomp) into a cache folder keyed by the source, the command, the compiler and torch's
version and CPU capability, and loads it with ``torch.ops.load_library``. Where that fails (no compiler, no
headers, a symbol torch does not export), it warns once with the reason and the caller keeps its torch code.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings
from typing import Callable

import torch


def compiler() -> str:
    from torch._inductor.cpp_builder import get_cpp_compiler
    return get_cpp_compiler()


def command(compiler_path: str, source: pathlib.Path, target: pathlib.Path) -> list[str]:
    """The compile-and-link command of ``source`` into the shared library ``target``."""
    from torch.utils.cpp_extension import include_paths, library_paths
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    native = [] if sys.platform == "darwin" else ["-march=native"]
    return [compiler_path, "-O3", *native, "-fopenmp", "-std=c++17", "-shared", "-fPIC",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *(f"-I{p}" for p in include_paths()), str(source), "-o", str(target),
            *(f"-L{p}" for p in library_paths()), "-lc10", "-ltorch_cpu", "-ltorch",
            *(f"-Wl,-rpath,{p}" for p in library_paths())]


def cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "seqmix" / "kernels"


class Kernel:
    """One C++ source, built and loaded at most once per process.

    ``what`` names the kernel and ``instead`` says what runs without it, for the one warning a failed build gives;
    ``on_load`` runs once after loading (e.g. to register fake implementations for ``torch.export``); ``enabled``
    is whether its callers may use it (switched inside ``switched``)."""

    def __init__(self, source: pathlib.Path, what: str, instead: str, on_load: Callable[[], None] | None = None,
                 enabled: bool = True):
        self.source, self.what, self.instead, self.on_load, self.enabled = source, what, instead, on_load, enabled
        self.status: dict = {}  # "ok": bool, "reason": str
        self.compiler = compiler

    @contextlib.contextmanager
    def switched(self, enabled: bool):
        """``enabled`` set to the given value inside this block, restored after it."""
        previous, self.enabled = self.enabled, enabled
        try:
            yield
        finally:
            self.enabled = previous

    def build(self) -> pathlib.Path:
        """The compiled library for this source, command, compiler and torch (compiled if not in the cache)."""
        cxx = self.compiler()
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
        key = hashlib.sha256("\0".join([self.source.read_text(), " ".join(command(cxx, self.source, self.source)),
                                        version, torch.__version__, torch.backends.cpu.get_cpu_capability()]).encode())
        target = cache_dir() / f"{self.source.stem}_{key.hexdigest()[:16]}.so"
        if not target.exists():
            from tqdm import tqdm  # its write() keeps an active progress bar intact
            tqdm.write(f"seqmix: compiling {self.what} for this machine (once; cached in {target.parent})",
                       file=sys.stderr)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as folder:  # built aside, then moved in at once
                built = pathlib.Path(folder) / target.name
                result = subprocess.run(command(cxx, self.source, built), capture_output=True, text=True)
                if result.returncode:
                    raise RuntimeError(f"{cxx} failed: {result.stderr.strip()[-2000:]}")
                os.replace(built, target)
        return target

    def available(self) -> bool:
        """Whether the kernel's operators are loaded (built on the first call; a failure is reported once, with a
        warning naming the reason, and not retried in this process)."""
        if "ok" not in self.status:
            try:
                torch.ops.load_library(str(self.build()))
                if self.on_load:
                    self.on_load()
                self.status.update(ok=True, reason="")
            except Exception as error:  # no compiler, no headers, a failed compile or load: the torch code instead
                self.status.update(ok=False, reason=f"{type(error).__name__}: {error}")
                warnings.warn(f"seqmix: {self.what} could not be built ({self.status['reason']}); {self.instead}",
                              RuntimeWarning, stacklevel=3)
        return self.status["ok"]
